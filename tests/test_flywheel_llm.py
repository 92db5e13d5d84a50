"""The flywheel's LLM steps against a counting test server: samples and quotas, the request cache across
runs, a parser change without new requests, the explicit max_tokens reuse, judge failures recorded, and the
kill-and-resume property (SIGKILL a `novalign data run` subprocess mid-run, restart, byte-identical output,
zero requests answered twice)."""

import json
import os
import signal
import subprocess
import sys

import yaml

from conftest import ROOT
from counting_llm import CountingLLM, default_reply
from novalign.config.llm import LLMConfig
from novalign.flywheel.pipeline import Pipeline
from novalign.flywheel.steps.llm import fitting_samples
from novalign.llm.cache import CachedSample


def _prompts(tmp_path, n=3):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(n)))
    return path


def _llm(server, cache, **kw):
    return LLMConfig(base_url=server.url, model="m", api_key="k", cache_path=str(cache), max_attempts=8,
                     backoff_base_s=0.01, backoff_max_s=0.05, **kw)


def _gen(models=None, **kw):
    return {"models": models or [{"name": "a"}], "n": 2, "temperature": 0.7, **kw}


def test_fitting_samples_by_hand():
    """Cached under limit 8. New limit 6: sample 0 (5 tokens, stop) fits; sample 1 (6, stop) fits; sample 2,
    cut by the old limit ('length'), does not, so sample 3 is not taken either (sample k must stay sample k).
    New limit 5: only sample 0. Without per-sample counts a lower limit reuses nothing. A higher limit (10, or
    none) reuses every reply that stopped by itself, whatever its length."""
    s = {0: CachedSample("a", "stop", 1, 5, "m"), 1: CachedSample("b", "stop", 1, 6, "m"),
         2: CachedSample("c", "length", 1, 8, "m"), 3: CachedSample("d", "stop", 1, 2, "m")}
    assert sorted(fitting_samples(s, 6, 8, True)) == [0, 1]
    assert sorted(fitting_samples(s, 5, 8, True)) == [0]
    assert fitting_samples(s, 6, 8, False) == {}
    assert sorted(fitting_samples(s, 10, 8, False)) == [0, 1]
    assert sorted(fitting_samples({0: s[3], 1: s[0]}, None, 8, False)) == [0, 1]


def test_generate_models_quotas_and_the_cache(tmp_path):
    """3 prompts; model a: 2 samples each (3 requests, 6 records); model b (n=1) has a quota of 1 prompt:
    the first (1 request, 1 record). 7 records, 4 requests. Priced at 1 per million prompt tokens x 10^6 (the
    server reports 10 prompt tokens a call): cost 4 x 10 = 40. The same pipeline in a new run folder on the
    same cache: 0 new requests, cost 0, the same bytes."""
    server = CountingLLM()
    try:
        cache = tmp_path / "cache.sqlite"
        models = [{"name": "a"}, {"name": "b", "n": 1, "max_prompts": 1, "llm": {"model": "m2"}}]

        def run(folder):
            llm = _llm(server, cache, prices={"m*": {"prompt_per_million": 1e6}})
            p = Pipeline(tmp_path / folder, llm=llm, progress=False)
            return p.source("p", _prompts(tmp_path)).step("gen", "llm_generate", _gen(models)).run()

        first = run("one")
        recs = first.records("gen")
        assert [r["_id"] for r in recs] == ["p-1/a/0", "p-1/a/1", "p-1/b/0", "p-2/a/0", "p-2/a/1", "p-3/a/0", "p-3/a/1"]
        assert server.requests_answered == 4 and first.steps[0]["requests"] == 4 and first.steps[0]["cost"] == 40
        again = run("two")
        assert server.requests_answered == 4 and again.steps[0]["cache_hits"] == 4 and again.steps[0]["requests"] == 0
        assert again.steps[0]["cost"] == 0
        assert again.outputs["gen"].read_bytes() == first.outputs["gen"].read_bytes()
    finally:
        server.close()


def test_parser_change_makes_no_requests(tmp_path):
    """A judge step rerun with another parser (rating -> brackets): the step's folder changes (its config did),
    every request comes from the cache: zero new requests."""
    server = CountingLLM()
    try:
        cache = tmp_path / "cache.sqlite"

        def run(parser):
            p = Pipeline(tmp_path / "run", llm=_llm(server, cache), progress=False).source("p", _prompts(tmp_path))
            p.step("gen", "llm_generate", _gen())
            p.step("judge", "llm_judge", {"template": "rl_rating", "parser": parser})
            return p.run()

        first = run("rating")
        asked = server.requests_answered
        assert asked == 3 + 6  # 3 generation requests (n=2), 6 judgments
        second = run("brackets")
        assert server.requests_answered == asked
        assert [s["skipped"] for s in second.steps] == [True, False] and second.steps[1]["cache_hits"] == 6
        assert [r["judgment"] for r in first.records("judge")] == [r["judgment"] for r in second.records("judge")]
    finally:
        server.close()


def test_max_tokens_reuse_is_explicit(tmp_path):
    """One sample per prompt. Run 1 at max_tokens 8: default_reply answers 5..9 words, so a 9-word reply is cut
    ('length'). Run 2 at max_tokens 6 with reuse_max_tokens [8]: a prompt is asked again only if its cached
    reply does not fit (cut, or longer than 6 words) -- counted from run 1's records. Run 3 at 10 with
    reuse [8]: only the cut ones are asked. Without the option (run 4, at 7) every prompt is asked."""
    server = CountingLLM()
    try:
        cache = tmp_path / "cache.sqlite"

        def run(folder, **kw):
            p = Pipeline(tmp_path / folder, llm=_llm(server, cache), progress=False).source("p", _prompts(tmp_path, 8))
            return p.step("gen", "llm_generate", _gen(**kw) | {"n": 1}).run()

        first = run("one", max_tokens=8)
        recs = first.records("gen")
        unfit = {r["_id"].split("/")[0] for r in recs
                 if r["finish_reason"] == "length" or len(r["response"].split()) > 6}
        before = server.requests_answered
        assert before == 8
        reused = run("two", max_tokens=6, reuse_max_tokens=[8])
        assert server.requests_answered - before == len(unfit) and 0 < len(unfit) < 8
        kept = {r["_id"]: r["response"] for r in reused.records("gen")}
        for r in recs:
            if r["_id"].split("/")[0] not in unfit:
                assert kept[r["_id"]] == r["response"]  # the very reply of run 1
        before = server.requests_answered
        run("three", max_tokens=10, reuse_max_tokens=[8])
        assert server.requests_answered - before == sum(r["finish_reason"] == "length" for r in recs) > 0
        before = server.requests_answered
        run("four", max_tokens=7)
        assert server.requests_answered - before == 8
    finally:
        server.close()


def test_judge_failures_are_recorded_not_guessed(tmp_path):
    """A judge that never gives '[[N]]' for prompt 'question 1?': 3 attempts (2 re-asks quoting the error),
    then the record is kept with judgment null, the error and all 3 raw replies; the others are scored."""
    def reply(body, i):
        text = json.dumps(body["messages"])
        if "Rating: [[N]]" in text and "question 1?" in text:
            return "I think it is good."
        return default_reply(body, i)

    server = CountingLLM(reply)
    try:
        p = Pipeline(tmp_path / "run", llm=_llm(server, tmp_path / "c.sqlite"), progress=False)
        p.source("p", _prompts(tmp_path)).step("gen", "llm_generate", _gen() | {"n": 1})
        result = p.step("judge", "llm_judge", {"attempts": 3}).run()
        recs = {r["_id"]: r for r in result.records("judge")}
        bad = recs["p-2/a/0"]
        assert bad["judgment"] is None and len(bad["judgment_raw"]) == 3 and "[[rating]]" in bad["judgment_error"]
        assert all(isinstance(r["judgment"], float) for k, r in recs.items() if k != "p-2/a/0")
        assert server.requests_answered == 3 + 3 + 2  # generations, first asks, two re-asks
    finally:
        server.close()


def test_sigkill_and_resume_is_byte_identical_with_no_request_paid_twice(tmp_path):
    """8 prompts, generate (n=2) then judge (16 judgments), with 30 % 429s; the judge's first reply to the
    judgments of odd-numbered prompts has no rating, so they are re-asked (8 more requests): 32 distinct
    requests. The pipeline runs as a `novalign data run` subprocess; the server SIGKILLs it when its 3rd and
    11th requests arrive (in generation; in the judge's first round) and when the 3rd re-ask arrives -- then
    the first-round replies of the judgments still open are in no record, only in the request cache -- and
    once more right after its 6th generation, before the reply is written: a reply paid for that the killed
    client never got. The test starts it again each time. The output equals an uninterrupted run's byte for
    byte and the server generated no request twice: the restarted client asks for the lost reply under the
    same idempotency key and gets it replayed. (Against a server that ignores the keys, that reply is
    generated twice: the check below fails with honour_keys=False; with llm.no_cache: true there are 9
    duplicates.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost"}

    def config(folder, server):
        cfg = {"run_dir": str(tmp_path / folder), "progress": False,
               "llm": {"base_url": server.url, "model": "m", "api_key": "k", "max_concurrency": 1,
                       "max_attempts": 20, "backoff_base_s": 0.005, "backoff_max_s": 0.02},
               "sources": {"p": {"path": str(_prompts(tmp_path, 8))}},
               "steps": [{"name": "gen", "type": "llm_generate", "config": _gen()},
                         {"name": "judge", "type": "llm_judge", "config": {"template": "rl_rating"}}]}
        path = tmp_path / f"{folder}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(path):
        return subprocess.Popen([sys.executable, "-m", "novalign.cli", "data", "run", str(path)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def reply(body, i):
        text = json.dumps(body["messages"])
        odd = any(f"question {k}?" in text for k in (1, 3, 5, 7))
        if "Rating: [[N]]" in text and len(body["messages"]) == 1 and odd:
            return "A fine answer, I would say."
        return default_reply(body, i)

    plain = CountingLLM(reply, p429=0.3, seed=1)
    try:
        proc = start(config("plain", plain))
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out
        assert plain.requests_answered == plain.requests_generated == 32 and plain.duplicates == 0
    finally:
        plain.close()

    current: dict = {"reasks": 0, "generations": 0}

    def kill_at(count, body):
        current["reasks"] += len(body["messages"]) == 3
        if count in (3, 11) or (len(body["messages"]) == 3 and current["reasks"] == 3):
            os.kill(current["proc"].pid, signal.SIGKILL)
            return False  # the request dies with its client, unanswered

    def kill_after(count, body):
        current["generations"] += 1
        if current["generations"] == 6:
            os.kill(current["proc"].pid, signal.SIGKILL)
            return False  # generated, never delivered

    killed = CountingLLM(reply, p429=0.3, seed=1, on_request=kill_at, on_generated=kill_after)
    try:
        path, kills = config("killed", killed), 0
        while True:
            current["proc"] = start(path)
            out = current["proc"].communicate(timeout=120)[0]
            if current["proc"].returncode == 0:
                break
            assert current["proc"].returncode == -signal.SIGKILL, out
            kills += 1
            assert kills <= 4
        assert kills == 4
        assert killed.duplicates == 0 and killed.requests_generated == 32 and killed.replayed == 1
        assert set(killed.generated) == set(plain.generated) and killed.requests_answered == 32
    finally:
        killed.close()
    for step in ("gen", "judge"):
        a = next((tmp_path / "plain" / "steps").glob(f"{step}-*")) / "records.jsonl"
        b = next((tmp_path / "killed" / "steps").glob(f"{step}-*")) / "records.jsonl"
        assert a.read_bytes() == b.read_bytes()


def test_generate_failure_is_dropped_with_its_reason(tmp_path):
    """The server rejects 'question 1?' with HTTP 400 (not retried). With drop_failed (the default) that prompt
    is dropped as 'llm failed: bad_request', its error in drops.jsonl; without it, it is kept as an error
    record (response null, response_error). The other prompts are answered."""
    server = CountingLLM(status=lambda body: 400 if "question 1?" in json.dumps(body["messages"]) else None)
    try:
        def run(folder, **kw):
            p = Pipeline(tmp_path / folder, llm=_llm(server, tmp_path / "c.sqlite"), progress=False)
            return p.source("p", _prompts(tmp_path)).step("gen", "llm_generate", _gen(**kw) | {"n": 1}).run()

        dropped = run("drop")
        assert dropped.steps[0]["dropped_by_reason"] == {"llm failed: bad_request": 1}
        drops = [json.loads(x) for x in (dropped.outputs["gen"].parent / "drops.jsonl").read_text().splitlines()]
        assert drops[0]["_id"] == "p-2" and "HTTP 400" in drops[0]["detail"]["errors"]["a"]
        assert [r["_id"] for r in dropped.records("gen")] == ["p-1/a/0", "p-3/a/0"]
        kept = run("keep", drop_failed=False).records("gen")
        assert kept[1]["_id"] == "p-2/a/error" and kept[1]["response"] is None and "HTTP 400" in kept[1]["response_error"]
    finally:
        server.close()


def test_judge_max_tokens_reuse(tmp_path):
    """The judge's replies ('Reasons. Rating: [[r]]', 3 words) fit any limit >= 3: a rerun at max_tokens 256
    with reuse_max_tokens [512] asks nothing and gives the same verdicts; without the option, all 3 again."""
    server = CountingLLM()
    try:
        def run(folder, **kw):
            p = Pipeline(tmp_path / folder, llm=_llm(server, tmp_path / "c.sqlite"), progress=False)
            p.source("p", _prompts(tmp_path)).step("gen", "llm_generate", _gen() | {"n": 1})
            return p.step("judge", "llm_judge", kw).run()

        first = run("one")
        before = server.requests_answered
        again = run("two", max_tokens=256, reuse_max_tokens=[512])
        assert server.requests_answered == before
        assert [r["judgment"] for r in again.records("judge")] == [r["judgment"] for r in first.records("judge")]
        run("three", max_tokens=128)
        assert server.requests_answered == before + 3
    finally:
        server.close()


def test_generate_sends_each_records_tools_and_checks_them(tmp_path):
    """A record with `tools` is asked with them (the server sees the body's `tools`); one without is asked
    without; a record whose tools are malformed stops the run naming file, line 3 and the field."""
    import pytest

    from novalign.data.io import DataError

    weather = {"type": "function", "function": {"name": "weather", "description": "the weather",
                                                "parameters": {"type": "object", "properties": {}}}}
    seen: list = []
    server = CountingLLM(lambda body, i: (seen.append(body.get("tools")), "ok")[1])
    try:
        src = tmp_path / "p.jsonl"
        rows = [{"prompt": "weather?", "tools": [weather]}, {"prompt": "hello?"}]
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        p = Pipeline(tmp_path / "run", llm=_llm(server, tmp_path / "c.sqlite"), progress=False)
        p.source("p", src).step("gen", "llm_generate", _gen() | {"n": 1}).run()
        assert sorted(map(json.dumps, seen)) == sorted([json.dumps([weather]), "null"])
        bad = tmp_path / "bad.jsonl"
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows + [{"prompt": "x", "tools": [{"type": "function"}]}]))
        with pytest.raises(DataError) as info:
            Pipeline(tmp_path / "run2", llm=_llm(server, tmp_path / "c.sqlite"), progress=False).source(
                "p", bad).step("gen", "llm_generate", _gen() | {"n": 1}).run()
        assert (info.value.path, info.value.line, info.value.field) == (str(bad), 3, "tools[0].function")
    finally:
        server.close()


def test_one_models_crash_fails_the_step_instead_of_losing_its_results():
    """``ask_models_concurrently`` (llm_generate's and llm_label's per-model threads): model "b"'s batch
    raises (its request is not a request: ``messages`` must be a list), so iterating the results must raise
    that error; swallowing it on the thread would leave b's prompts silently missing from the step's output.
    No request reaches a server (the port is closed): the conversion fails first."""
    import pytest

    from novalign.flywheel.steps.llm import ask_models_concurrently
    from novalign.llm import LLMClient
    from novalign.llm.openai_compat import OpenAIBackend

    client = LLMClient(OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key="k"), progress=False,
                       print_usage=False)
    with client, pytest.raises(ValueError, match="request 0"):
        list(ask_models_concurrently({"a": client, "b": client}, {"a": [], "b": [{"messages": "not a list"}]}))
