"""The world's held-out prompts as a ``novalign eval`` suite (novalign.world.suite): the runner's numbers are
those of the direct loop (``world/evaluate.py: evaluate_model``) to the token, in plain and chat mode, and a
second run asks nothing. Also the LLM layer's raw completions and one-batch asking it relies on."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from novalign.config import EvalConfig, WorldConfig
from novalign.data.io import DataError
from novalign.eval.runner import run_eval
from novalign.world.evaluate import evaluate_model
from novalign.world.generator import STOP_STRINGS, build_world, few_shot_prompt, write_world
from novalign.world.suite import read_shots, read_world_tasks, world_order

# demo_ci's world, smaller: 7 x 4 = 28 eval prompts and 6 of a length check below, so batches of 16 are 16 + 16 + 2
WORLD = WorldConfig(seed=0, num_countries=12, sft_per_capability=8, rl_per_capability=1, eval_per_capability=4,
                    corpus_fact_repeats=1, corpus_worked_examples=4, pas_prompts=4, pas_abstain_per_capability=1,
                    few_shot=1)
BATCH, MAX_TOKENS = 16, 16


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory) -> tuple[dict[str, str], str]:
    """The world's files and a random tiny model. Its greedy replies are token soup whose logits have small
    margins (what batch composition would show first); the world's checkers fail them all, so six prompts get
    a word-count check that some replies meet and some do not, for pass rates other than 0."""
    files = write_world(build_world(WORLD), tmp_path_factory.mktemp("world-suite") / "world")
    tasks = [json.loads(line) for line in Path(files["eval"]).read_text().splitlines()]
    brief = [{"capability": "brief", "messages": t["messages"],
              "check": {"type": "ifeval", "instruction_id_list": ["length_constraints:number_words"],
                        "kwargs": [{"relation": "less than", "num_words": 9}]}} for t in tasks[::5][:6]]
    with open(files["eval"], "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in brief)
    return files, str(tiny_model_dir)


def _direct(files: dict[str, str], model: str, plain: bool):
    tasks = read_world_tasks(files["eval"])
    return evaluate_model(model, tasks, plain=plain, shots=read_shots(files["shots"]), max_new_tokens=MAX_TOKENS,
                          batch_size=BATCH)


def _config(files: dict[str, str], model: str, out: Path) -> EvalConfig:
    """The same model twice: ``base`` evaluated plain (few-shot text), ``chat`` through the template."""
    return EvalConfig.model_validate({
        "models": [{"name": "base", "path": model, "max_tokens": MAX_TOKENS, "local": {"device": "cpu", "dtype": "float32"}},
                   {"name": "chat", "path": model, "max_tokens": MAX_TOKENS, "local": {"device": "cpu", "dtype": "float32"}}],
        "suites": [{"type": "world", "data": files["eval"], "options": {"plain": ["base"], "shots": files["shots"]}}],
        "output_dir": str(out), "batch_size": BATCH, "progress": False,
    })


@pytest.fixture
def batches(monkeypatch) -> list[list[tuple]]:
    """Every ``generate_batch`` call, direct or through the runner's local engine, as its rows (prompt ids and
    settings). A recorder around the real function: it changes nothing, so batching is what is compared --
    this tiny model happens to give the same greedy replies in other batches on CPU, a larger one need not."""
    import novalign.llm.local
    import novalign.models.generate

    calls: list[list[tuple]] = []
    real = novalign.models.generate.generate_batch

    def recorded(model, tokenizer, rows):
        calls.append([(tuple(r.prompt_ids), r.max_new_tokens, r.temperature, tuple(r.stop)) for r in rows])
        return real(model, tokenizer, rows)

    monkeypatch.setattr(novalign.models.generate, "generate_batch", recorded)  # evaluate_model's import
    monkeypatch.setattr(novalign.llm.local, "generate_batch", recorded)  # the engine's
    return calls


def test_runner_reproduces_evaluate_model_exactly_and_resumes(setup, batches, tmp_path):
    files, model = setup
    summaries = run_eval(_config(files, model, tmp_path))
    runner_batches = list(batches)
    batches.clear()
    for name, plain in (("base", True), ("chat", False)):
        direct = _direct(files, model, plain)
        records = [json.loads(line) for line in (tmp_path / name / "world.jsonl").read_text().splitlines()]
        assert len(records) == len(direct.rows) == 34
        # every reply identical to the token, graded the same; matched by capability and prompt (a role prompt
        # recurs under other system prompts: those few compare as a multiset)
        got, want = defaultdict(list), defaultdict(list)
        for table, rows in ((got, records), (want, direct.rows)):
            for r in rows:
                table[r["capability"], r["prompt"]].append((r["reply"], r["passed"]))
        assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
        summary = summaries[name]["world"]
        assert list(summary["rates"].items()) == list(direct.rates.items())  # the table: same keys, order, values
        assert summary["metrics"]["pass_rate"] == direct.rates["mean"]
        assert summary["format"] == ("plain" if plain else "chat")
        assert summary["resume"] == {"reused": 0, "written": 34, "model_requests": 34, "judge_requests": 0,
                                     "dropped_truncated": 0}
        assert sum(bool(r["reply"]) for r in direct.rows) > 20  # the comparison is not of empty replies
        assert 0 < direct.rates["brief"] < 1  # nor of verdicts that are all the same
    # the same batches, row for row: sorted by length, 16 + 16 + 2, plain (with the stop strings) then chat
    assert [len(b) for b in batches] == [16, 16, 2, 16, 16, 2]
    assert runner_batches == batches
    assert (tmp_path / "report.md").is_file() and "world" in (tmp_path / "report.md").read_text()

    batches.clear()
    again = run_eval(_config(files, model, tmp_path))  # resume: everything is stored, nothing is asked
    assert batches == []
    for name in ("base", "chat"):
        assert again[name]["world"]["resume"] == {"reused": 34, "written": 0, "model_requests": 0, "judge_requests": 0,
                                                   "dropped_truncated": 0}
        assert again[name]["world"]["rates"] == summaries[name]["world"]["rates"]


def test_raw_completion_is_one_engine_batch_of_the_plain_prompt(setup):
    """The LLM layer's raw prompt: encoded without special tokens and no template, cut at the stop strings,
    and ``run_together`` runs the requests as exactly one ``generate_batch`` (the batch the suite relies on)."""
    from novalign.llm import ChatRequest, LLMClient
    from novalign.llm.local import LocalBackend
    from novalign.models.generate import GenerationRequest, generate_batch

    files, model = setup
    tasks = read_world_tasks(files["eval"])[:5]
    shots = read_shots(files["shots"])
    texts = [few_shot_prompt(t, shots[t["capability"]]) for t in tasks]
    backend = LocalBackend(model, device="cpu", dtype="float32", max_batch_size=5)
    client = LLMClient(backend, print_usage=False, progress=False)
    try:
        engine = backend.engine
        requests = [ChatRequest(prompt=t, temperature=0.0, max_tokens=MAX_TOKENS, stop=list(STOP_STRINGS)) for t in texts]
        assert client.prompt_tokens(requests) == [len(engine.tokenizer(t, add_special_tokens=False)["input_ids"])
                                                  for t in texts]
        too_long = ChatRequest(prompt=texts[0], temperature=0.0, max_tokens=10_000)  # past the model's context
        results = client.run_together(requests + [too_long])
        assert results[-1].kind == "bad_request" and "context" in results[-1].reason  # that one fails, alone
        results = results[:-1]
        # one batch of all five rows: the engine's cap, 5, allows it (a smaller cap splits it, checked below)
        assert (engine.queue.batches_run, engine.queue.largest_batch) == (1, 5)
        rows = [GenerationRequest(engine.tokenizer(t, add_special_tokens=False)["input_ids"], max_new_tokens=MAX_TOKENS,
                                  stop=STOP_STRINGS) for t in texts]
        assert [r.text for r in results] == [o.text for o in generate_batch(engine.model, engine.tokenizer, rows)]
        assert all(not any(s in r.text for s in STOP_STRINGS) for r in results)
    finally:
        client.close()
    # the cap holds for run_together too: no caller makes the engine run more rows at once than max_batch_size
    small = LocalBackend(model, device="cpu", dtype="float32", max_batch_size=2)
    capped = LLMClient(small, print_usage=False, progress=False)
    try:
        capped.run_together(requests)
        assert (small.engine.queue.batches_run, small.engine.queue.largest_batch) == (3, 2)
    finally:
        capped.close()


def test_world_order_is_evaluate_models_batching():
    """Stable sort by length, then chunks: lengths [3, 1, 3, 2, 1] -> order [1, 4, 3, 0, 2] (ties keep file
    order), chunks of 2 -> [1, 4], [3, 0], [2]; unknown lengths keep file order."""
    assert world_order([3, 1, 3, 2, 1], 5, 2) == [[1, 4], [3, 0], [2]]
    assert world_order(None, 3, 2) == [[0, 1], [2]]


def test_bad_world_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "eval.jsonl"
    good = {"capability": "math", "messages": [{"role": "user", "content": "1+1?"}], "check": {"type": "answer", "answer": "2"}}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "check": "2"}) + "\n")
    with pytest.raises(DataError, match=r"eval.jsonl:2.*check"):
        read_world_tasks(path)


def test_raw_prompt_request_validation_body_and_cache_keys():
    """A request is a chat or a raw prompt, never both; chat requests keep the cache keys they had before raw
    prompts existed (no ``prompt`` field in their key); a raw prompt goes to ``/completions`` as ``prompt``."""
    from novalign.llm import ChatRequest
    from novalign.llm.cache import cache_key
    from novalign.llm.openai_compat import OpenAIBackend

    chat = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="not both"):
        ChatRequest(messages=chat, prompt="hi")
    with pytest.raises(ValueError, match="messages"):
        ChatRequest()
    with pytest.raises(ValueError, match="structured"):
        ChatRequest(prompt="hi", json_mode=True)
    assert "prompt" not in ChatRequest(chat).cache_fields()
    assert cache_key("m", ChatRequest(prompt="hi")) != cache_key("m", ChatRequest(chat))
    body = OpenAIBackend("http://127.0.0.1:1/v1", "m").body(ChatRequest(prompt="hi", stop=["\n\n"], temperature=0.0))
    assert body["prompt"] == "hi" and "messages" not in body and body["stop"] == ["\n\n"]
