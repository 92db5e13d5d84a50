"""PAS at inference: templates, the RAG scope check, `PromptAugmenter`, `novalign pas augment`, the
`novalign pas serve` proxy in front of a real `novalign serve` upstream, and `novalign pas compare`."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx2
import openai
import pytest
from cli_server import start_server, stop

from novalign.config import PASCompareConfig
from novalign.pas.augment import (
    PromptAugmenter,
    constrain_to_scope,
    content_words,
    fill,
    is_abstain,
    join_prompt,
    keyword_constraint,
    keywords_from_results,
    load_text,
    pas_input,
)
from novalign.pas.proxy import last_user_text, pas_switch, replace_last_user_text

PROMPT = "Tell me about the Mars rover."


@pytest.fixture(scope="module")
def upstream(tiny_model_dir):
    proc, url, _ = start_server(["serve", "--model", str(tiny_model_dir), "--port", "0", "--served-model-name", "tiny",
                                 "--set", "engine.default_max_tokens=8"], "novalign serve:")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def proxy(tiny_model_dir, upstream):
    """The proxy, with the tiny random model as its PAS model (its complements are noise, which is enough to
    check what reaches the upstream), complement capped at 12 tokens."""
    proc, url, lines = start_server(["pas", "serve", "--pas-model", str(tiny_model_dir), "--upstream", upstream,
                                     "--port", "0", "--set", "augment.max_tokens=12"], "novalign pas serve:")
    yield url, lines
    stop(proc)


@pytest.fixture(scope="module")
def augmenter(tiny_model_dir):
    aug = PromptAugmenter.from_model(tiny_model_dir, device="cpu", max_tokens=12)
    yield aug
    aug.close()


def test_templates_fill_and_join():
    """The PAS input is the 4.6 template with the prompt in place; braces in a prompt survive; the RAG
    template carries the keywords; the join is prompt, blank line, complement; no complement: unchanged."""
    text = pas_input('Return {"a": 1}', load_text(None, "template.txt"))
    assert '<User prompt>\nReturn {"a": 1}\n<Complementary information>' in text
    rag = pas_input("Q", load_text(None, "template.txt"), keywords=["mars", "rover"],
                    rag_template=load_text(None, "template_rag.txt"))
    assert "<Search keywords>\nmars, rover\n<User prompt>\nQ" in rag
    assert join_prompt("Q", "Be brief.", load_text(None, "join.txt")) == "Q\n\nBe brief."
    assert join_prompt("Q", "  ", "{prompt}\n{complement}") == "Q"
    with pytest.raises(ValueError, match="no {complement}"):
        fill("{prompt}", prompt="x", complement="y")


def test_abstain_complement_leaves_the_prompt_unchanged():
    """abstain "None.": the replies " none ", "NONE!" and "None." are the abstain answer (case, spaces and end
    punctuation aside) -> complement "" -> the prompt unchanged; "None. Use JSON." is a real complement; without
    ``abstain`` "None." is joined like any complement."""
    assert is_abstain(" none ", "None.") and is_abstain("NONE!", "None.") and not is_abstain("None. Use JSON.", "None.")
    aug = PromptAugmenter(client=None, join_template="{prompt} {complement}", abstain="None.")
    assert aug.finish("Q?", "None.\n\nignored").augmented == "Q?"
    assert aug.finish("Q?", "None. Use JSON.").augmented == "Q? None. Use JSON."
    plain = PromptAugmenter(client=None, join_template="{prompt} {complement}")
    assert plain.finish("Q?", "None.").augmented == "Q? None."


def test_scope_check_by_hand():
    """Prompt "Tell me about the Mars rover.", keywords [Mars, rover], results ["NASA landed the rover in 2021."].
    Scope (stemmed, stop words dropped): tell, me, mar, rover, nasa, land, 2021.
    Complement "Focus on the rover landing by NASA. Mention recipes for Mars cake. Keep it clear.":
    - "Focus on the rover landing by NASA." -> focus (style word), rover, land, nasa: in scope.
    - "Mention recipes for Mars cake." -> mention (style), mar (scope), recip ("recipes"
      minus "es": the stemmer strips the first of ing/es/ed/s that leaves 3 letters), cake: strays [cake, recip].
    - "Keep it clear." -> style words only.
    trim: the second sentence goes; what is left names "rover" but not "Mars" -> the constraint is appended.
    flag: all sentences kept, both keywords named -> nothing appended, the strays reported.
    """
    complement = "Focus on the rover landing by NASA. Mention recipes for Mars cake. Keep it clear."
    results = ["NASA landed the rover in 2021."]
    assert {"mar", "rover"} <= content_words(PROMPT)
    text, report = constrain_to_scope(complement, PROMPT, ["Mars", "rover"], results, "trim")
    assert text == "Focus on the rover landing by NASA. Keep it clear. " + keyword_constraint(["Mars", "rover"])
    assert report["strays"] == [["cake", "recip"]] and not report["in_scope"]
    assert report["removed"] == ["Mention recipes for Mars cake."]
    flagged, report = constrain_to_scope(complement, PROMPT, ["Mars", "rover"], results, "flag")
    assert flagged == complement and report["strays"] == [["cake", "recip"]] and report["removed"] == []
    clean, report = constrain_to_scope("Keep it clear.", PROMPT, ["Mars"], (), "trim")
    assert report["in_scope"] and clean == "Keep it clear. Stay within the scope of the search results on: Mars."


def test_rag_with_search_results_only(augmenter):
    """Results only: the keywords are their most frequent content words -- "Mars rover Perseverance landed
    in 2021." + "The rover explores Mars." -> mars 2, rover 2, then perseverance (first of the 1-counts),
    and the complement (the tiny model's noise trimmed away) carries them as the constraint."""
    results = ["Mars rover Perseverance landed in 2021.", "The rover explores Mars."]
    assert keywords_from_results(results, 3) == ["mars", "rover", "perseverance"]
    out = augmenter.augment(PROMPT, results=results)
    assert out.scope is not None and out.scope["keywords"] == keywords_from_results(results)
    assert out.complement.endswith(keyword_constraint(keywords_from_results(results)))
    assert out.augmented == PROMPT + "\n\n" + out.complement


def test_proxy_helpers():
    assert pas_switch({"x-pas": "off"}, {}) is False and pas_switch({}, {"pas": False}) is False
    assert pas_switch({}, {}) is True and pas_switch({"x-pas": "on"}, {"pas": True}) is True
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "image_url", "image_url": {}}]}]
    assert last_user_text(msgs) == (2, "c") and last_user_text([{"role": "system", "content": "s"}]) is None
    out = replace_last_user_text(msgs, 2, "c!")
    assert out[2]["content"][0] == {"type": "text", "text": "c!"} and out[2]["content"][1]["type"] == "image_url"
    assert msgs[2]["content"][0]["text"] == "c"  # the input is not modified


def _chat(url: str, headers: dict | None = None, **body) -> httpx2.Response:
    payload = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 8}
    return httpx2.post(f"{url}/chat/completions", json=payload | body, headers=headers or {}, timeout=60)


def _prompt_tokens(model_dir, text: str) -> int:
    from novalign.models.generate import encode_chat
    from novalign.models.load import load_tokenizer

    return len(encode_chat(load_tokenizer(model_dir), [{"role": "user", "content": text}]))


def test_proxy_forwards_augmented_prompt_and_can_be_switched_off(proxy, upstream, augmenter, tiny_model_dir):
    """The upstream receives exactly the augmented prompt (its prompt_tokens match the augmenter's output for
    the same prompt); with `X-PAS: off` or `"pas": false` the reply equals a direct upstream call."""
    url, lines = proxy
    expected = augmenter.augment(PROMPT)
    assert expected.complement and expected.augmented.startswith(PROMPT + "\n\n")
    on = _chat(url)
    assert on.status_code == 200 and on.headers["x-pas"] == "on" and float(on.headers["x-pas-latency-ms"]) > 0
    assert on.json()["usage"]["prompt_tokens"] == _prompt_tokens(tiny_model_dir, expected.augmented)
    direct = _chat(upstream).json()
    for off in (_chat(url, {"X-PAS": "off"}), _chat(url, pas=False)):
        assert off.status_code == 200 and off.headers["x-pas"] == "off"
        assert off.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
        assert off.json()["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    health = httpx2.get(url.removesuffix("/v1") + "/health", timeout=10).json()
    assert health["pas_on"] >= 1 and health["pas_off"] >= 2 and health["pas_mean_latency_ms"] > 0
    assert any("PAS added" in line and "ms" in line for line in lines)  # the added latency is logged


def test_proxy_streams_and_rag_keywords_reach_upstream(proxy, augmenter, tiny_model_dir):
    """Streaming through the proxy (official SDK) gives the same greedy text as the non-streamed call, in
    several chunks. RAG: the tiny model's noise strays from the keywords' scope, so it is trimmed and the
    complement the upstream sees carries the keywords as an explicit constraint."""
    url, _ = proxy
    sdk = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": PROMPT}]
    full = sdk.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=8)
    stream = sdk.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=8, stream=True)
    chunks = [c for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 3 and text == full.choices[0].message.content
    rag = _chat(url, pas_search_keywords=["Mars", "rover"])
    expected = augmenter.augment(PROMPT, keywords=["Mars", "rover"])
    assert expected.complement.endswith(keyword_constraint(["Mars", "rover"]))
    assert rag.json()["usage"]["prompt_tokens"] == _prompt_tokens(tiny_model_dir, expected.augmented)
    assert _chat(url, {"X-PAS": "off"}, pas_search_keywords=["x"]).status_code == 200  # RAG fields never go upstream
    assert _chat(url, messages=[]).status_code == 400


def test_augment_cli_and_compare(tmp_path, tiny_model_dir, upstream):
    """`pas augment` writes one augmented record per input (RAG report where keywords were given);
    `pas compare` scores both conditions with the verifiers, through ux_pass_rate and gsb."""
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": PROMPT, "id": 7}) + "\n" + json.dumps({"prompt": "Q", "search_keywords": ["k"]}) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "novalign.cli", "pas", "augment", "--pas-model", str(tiny_model_dir),
                           "--input", str(inp), "--output", str(out), "--set", "max_tokens=8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["id"] == 7 and rows[0]["augmented"].startswith(PROMPT) and "scope" not in rows[0]
    assert rows[1]["scope"]["keywords"] == ["k"] and rows[1]["complement"].endswith(keyword_constraint(["k"]))

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "checks": [{"id": "detectable_format:json_format"}],
                                           "capability": "data"}) + "\n" for p in ("List facts about Mars.", "Give the rover's parts.")))
    cfg = PASCompareConfig.model_validate({
        "prompts": str(prompts), "output": str(tmp_path / "cmp.jsonl"), "max_tokens": 8,
        "upstream": {"base_url": upstream, "model": "tiny", "no_cache": True, "progress": False},
        "pas_llm": {"backend": "local", "model": str(tiny_model_dir), "no_cache": True, "local": {"device": "cpu"}},
        "augment": {"max_tokens": 8}})
    from novalign.pas.compare import run_compare, verifier_gsb

    summary = run_compare(cfg, console_print=lambda *a: None)
    assert summary["scored"] == 2 and summary["gsb"]["total"] == 2
    rows = [json.loads(x) for x in (tmp_path / "cmp.jsonl").read_text().splitlines()]
    expected = [verifier_gsb(r["pass_with"], r["pass_without"]) for r in rows]
    assert summary["gsb"]["good"] == expected.count("good") and summary["gsb"]["bad"] == expected.count("bad")
    assert summary["with_pas"]["pass_rate"] == sum(r["pass_with"] for r in rows) / 2
    assert [verifier_gsb(True, False), verifier_gsb(False, True), verifier_gsb(False, False)] == ["good", "bad", "same"]


def _longer_answer_wins(route: str, messages: list[dict]) -> str:
    """A scripted judge: "length" prefers the longer answer ([[C]] on equal length); "broken" never answers
    in the required format."""
    if route == "broken":
        return "Both are fine."
    prompt = messages[0]["content"]
    a, b = prompt.split("[Assistant A's answer]")[1].split("[Assistant B's answer]")
    a, b = len(a.strip()), len(b.strip())
    return "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"


def test_compare_with_an_llm_judge(tmp_path, tiny_model_dir, upstream):
    """With a judge, `pas compare` adds GSB from position-swapped pairwise judging. The scripted judge prefers
    the longer answer, so the expected verdict of each prompt follows from the two stored responses: with-PAS
    longer -> good, shorter -> bad, equal -> same (both orders agree). A judge that never answers in format
    gives no verdicts: every judgment is counted as failed (3 tries each) and none is guessed."""
    from scripted_llm import ScriptedLLM

    from novalign.pas.compare import run_compare

    judge = ScriptedLLM(_longer_answer_wins)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "checks": [{"id": "detectable_format:json_format"}]}) + "\n"
                               for p in ("List facts about Mars.", "Give the rover's parts.", "Name three moons.")))
    base = {"prompts": str(prompts), "max_tokens": 8,
            "upstream": {"base_url": upstream, "model": "tiny", "no_cache": True, "progress": False},
            "pas_llm": {"backend": "local", "model": str(tiny_model_dir), "no_cache": True, "local": {"device": "cpu"}},
            "augment": {"max_tokens": 8}}
    try:
        for route in ("length", "broken"):
            cfg = PASCompareConfig.model_validate(base | {
                "output": str(tmp_path / f"{route}.jsonl"),
                "judge": {"base_url": judge.base_url(route), "model": "judge", "no_cache": True, "progress": False}})
            summary = run_compare(cfg, console_print=lambda *a: None)
            rows = [json.loads(x) for x in (tmp_path / f"{route}.jsonl").read_text().splitlines()]
            if route == "length":
                expected = ["good" if len(r["response_with"].strip()) > len(r["response_without"].strip()) else
                            "bad" if len(r["response_with"].strip()) < len(r["response_without"].strip()) else "same"
                            for r in rows]
                assert [r["judge_verdict"] for r in rows] == expected
                assert summary["gsb_judge"]["good"] == expected.count("good")
                assert summary["gsb_judge"]["bad"] == expected.count("bad")
                assert summary["gsb_judge"]["total"] == 3 and summary["gsb_judge"]["num_failed"] == 0
                assert all(len(r["judge_raw"]) == 2 for r in rows)
            else:
                assert summary["gsb_judge"]["num_failed"] == 3 and summary["gsb_judge"]["total"] == 0
                assert all(r["judge_verdict"] is None and len(r["judge_raw"]) == 6 for r in rows)
        assert len(judge.bodies["length"]) == 6 and len(judge.bodies["broken"]) == 18
    finally:
        judge.close()


def test_augment_names_the_real_line_of_a_bad_record(tmp_path):
    """A record without a string prompt stops `pas augment` before any PAS call, naming its line as the file
    counts it: line 3 here, after a blank line 2 (counting records instead would say line 2)."""
    from typer.testing import CliRunner

    from novalign.cli import app

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "fine"}) + "\n\n" + json.dumps({"prompt": 7}) + "\n")
    result = CliRunner().invoke(app, ["pas", "augment", "--pas-model", str(tmp_path / "no-model"), "--input", str(inp),
                                      "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and "in.jsonl:3" in result.output and "prompt" in result.output, result.output
    assert not (tmp_path / "out.jsonl").exists()
