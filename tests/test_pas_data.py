"""PAS data construction (report section 4.6): bundled assets, rule checks, the self-correction decision,
few-shot selection, category balance, and `build-data` end to end against a real `novalign serve`."""

from __future__ import annotations

import json
import os

import pytest
from cli_server import health, start_server, stop

from novalign.config import LLMConfig, PASDataConfig
from novalign.data.io import DataError
from novalign.pas.augment import load_text
from novalign.pas.build import run_build_data
from novalign.pas.data import (
    CheckReply,
    Seed,
    category_balance,
    check_messages,
    decide,
    load_categories,
    load_seeds,
    pick_shots,
    synthesis_messages,
    synthesis_schema,
)
from novalign.pas.rules import answer_signals, rule_problems, word_count

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
GOOD = ("Show the formula for average speed, substitute the values with units, present each calculation step "
        "clearly, and state the final result in km/h with a brief sanity check.")
ANSWERS = "Sure! The average speed is 180 / 2.5 = 72 km/h."
SPEED = "A train travels 180 km in 2.5 hours. What is its average speed?"


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    proc, url, _ = start_server(["serve", "--model", str(tiny_model_dir), "--port", "0", "--served-model-name",
                                 "tiny", "--set", "engine.default_max_tokens=16"], "novalign serve:")
    yield url
    stop(proc)


def test_bundled_template_categories_and_seeds():
    """The 4.6 format is the default template; >= 30 seeds over >= 10 categories, each a real complement."""
    template = load_text(None, "template.txt")
    assert template.startswith("## Background\nYou are an expert in enhancing user prompts")
    assert "keep supplementary content to around 30 words" in template and template.endswith("{prompt}\n<Complementary information>")
    categories = load_categories()
    seeds = load_seeds(categories)
    assert len(seeds) >= 30 and len({s.category for s in seeds}) >= 10
    assert all(c.style for c in categories)
    for s in seeds:  # every seed passes the rule check it teaches: guidance, not an answer, 20-40 words
        assert rule_problems(s.complement) == [], s
        assert 20 <= word_count(s.complement) <= 40


def test_rule_checks_by_hand():
    """Worked by hand:
    - "Keep it short." -> 3 words, cue "keep" -> no problems.
    - "保持简洁 please" -> 4 CJK characters + 1 word = 5.
    - ANSWERS "Sure! The average speed is 180 / 2.5 = 72 km/h." -> opener "sure", "= 7" is a worked result,
      no guidance cue -> answers_prompt:opener,worked_result,no_guidance (11 words: length fine).
    - "```python\\nprint(1)\\n```" -> code fence, and no cue -> answers_prompt:code,no_guidance
      (3 whitespace words: "```python", "print(1)", "```" -- not too short). "Keep." -> 1 word: too short.
    - 50 x "explain" -> too_long (50 > 40), cue present.
    - "" -> empty only.
    """
    assert word_count("Keep it short.") == 3 and rule_problems("Keep it short.") == []
    assert word_count("保持简洁 please") == 5
    assert answer_signals(ANSWERS) == ["opener", "worked_result", "no_guidance"]
    assert rule_problems(ANSWERS) == ["answers_prompt:opener,worked_result,no_guidance"]
    assert rule_problems("```python\nprint(1)\n```") == ["answers_prompt:code,no_guidance"]
    assert rule_problems("Keep.") == ["too_short"]
    assert rule_problems(" ".join(["explain"] * 50)) == ["too_long"]
    assert rule_problems("   ") == ["empty"]
    assert "because" not in "".join(answer_signals("Use it because it helps.")) and answer_signals("Use it.") == []


def test_decide_combines_llm_verdict_and_rules():
    """The decision table of `decide`, case by case."""
    keep = CheckReply(verdict="keep", reason="fine")
    complement, check = decide(GOOD, [], keep, None)
    assert complement == GOOD and check["verdict"] == "keep" and check["llm_verdict"] == "keep"
    # the LLM rewrites an answer into a complement that passes the rules -> rewrite, original kept
    fix = CheckReply(verdict="rewrite", problems=["answers_prompt"], reason="it answers", rewrite=GOOD)
    complement, check = decide(ANSWERS, rule_problems(ANSWERS), fix, None)
    assert complement == GOOD and check["verdict"] == "rewrite" and check["original"] == ANSWERS
    # a rewrite that itself answers is dropped
    bad_fix = CheckReply(verdict="rewrite", reason="x", rewrite=ANSWERS)
    assert decide(ANSWERS, rule_problems(ANSWERS), bad_fix, None)[0] is None
    # the LLM keeps an answer, the rules veto it
    complement, check = decide(ANSWERS, rule_problems(ANSWERS), keep, None)
    assert complement is None and check["verdict"] == "drop" and "answers_prompt" in check["reason"]
    # the LLM drops
    assert decide(GOOD, [], CheckReply(verdict="drop", problems=["contradicts_prompt"], reason="c"), None)[0] is None
    # no LLM verdict: the rules decide, and the record says why
    complement, check = decide(ANSWERS, rule_problems(ANSWERS), None, "validation after 2 attempt(s)")
    assert complement is None and check["llm"].startswith("unavailable: validation")
    assert decide(GOOD, [], None, "timeout")[1]["verdict"] == "keep"
    with pytest.raises(ValueError):
        CheckReply(verdict="rewrite", reason="no text")


def test_pick_shots_same_category_first_and_reproducible():
    """3 math + 2 coding seeds, k=4, category math -> the 3 math seeds (shuffled) then 1 coding seed."""
    seeds = [Seed(f"m{i}", "c", "math") for i in range(3)] + [Seed(f"c{i}", "c", "coding") for i in range(2)]
    shots = pick_shots(seeds, "math", 4, key="p", seed=0)
    assert [s.category for s in shots] == ["math", "math", "math", "coding"]
    assert shots == pick_shots(seeds, "math", 4, key="p", seed=0)
    assert {tuple(pick_shots(seeds, "math", 3, key=f"p{i}")) for i in range(10)}.__len__() > 1


def test_category_balance_by_hand():
    """3 coding, 1 math, 0 planning -> shares 0.75 / 0.25 / 0, imbalance 3 / 1 = 3.0, planning missing."""
    cats = [c for c in load_categories() if c.name in ("coding", "math", "planning")]
    rows = [{"category": "coding"}] * 3 + [{"category": "math"}]
    out = category_balance(rows, cats)
    assert out["counts"] == {"coding": 3, "math": 1, "planning": 0}
    assert out["shares"] == {"coding": 0.75, "math": 0.25, "planning": 0.0}
    assert out["imbalance"] == 3.0 and out["missing"] == ["planning"]


def test_prompts_carry_categories_shots_and_findings():
    cats = load_categories()
    seeds = load_seeds(cats)
    messages = synthesis_messages(SPEED, cats, pick_shots(seeds, "math", 2, SPEED), category="math",
                                  keywords=["average speed"])
    assert len(messages) == 1 + 2 * 2 + 1 and "math:" in messages[0]["content"]
    assert json.loads(messages[2]["content"])["category"] == "math"
    assert "average speed" in messages[-1]["content"] and "The category is math." in messages[0]["content"]
    schema = synthesis_schema(cats)
    assert schema.model_validate({"category": "math", "complement": "x"}).category == "math"
    with pytest.raises(ValueError):
        schema.model_validate({"category": "astrology", "complement": "x"})
    check = check_messages(SPEED, ANSWERS, cats[1], ["too_long"])
    assert "Automatic checks found: too_long." in check[1]["content"] and cats[1].style in check[1]["content"]


def test_bad_pool_record_names_file_line_field(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "ok", "category": "math"}) + "\n" + json.dumps({"prompt": "x", "category": "astrology"}) + "\n")
    cfg = PASDataConfig(pool_files=[str(pool)], output=str(tmp_path / "out.jsonl"),
                        llm=LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", no_cache=True))
    with pytest.raises(DataError, match=r"pool.jsonl.*2.*category.*astrology"):
        run_build_data(cfg)


def test_build_data_through_novalign_serve(server, tmp_path):
    """Real HTTP to a tiny random model: its synthesis replies never parse (re-asked, then recorded as failed);
    existing complements go through self-correction, where the LLM check also fails to parse, so the rule
    check decides -- the answering and the over-long complements are dropped with their reasons, the good one
    kept. A rerun resumes: nothing decided is redone and the cache answers the retried calls (no new HTTP)."""
    pool = tmp_path / "pool.jsonl"
    rows = [
        {"prompt": SPEED, "category": "math", "complement": GOOD},
        {"prompt": SPEED + " ", "category": "math", "complement": ANSWERS},
        {"prompt": "Plan a weekend in Rome.", "category": "planning", "complement": " ".join(["Consider"] * 60)},
        {"prompt": "Write a haiku about rain.", "category": "creative_writing"},
        {"prompt": "Extract the dates from this text."},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pas.jsonl"
    llm = {"backend": "openai", "base_url": server, "model": "tiny", "cache_path": str(tmp_path / "cache.sqlite"),
           "structured_attempts": 2, "max_attempts": 1, "progress": False}
    cfg = PASDataConfig.model_validate({"pool_files": [str(pool)], "output": str(out), "max_tokens": 12, "llm": llm})
    before = health(server)["chat_completions"]
    summary = run_build_data(cfg, console_print=lambda *a: None)
    assert summary | {"balance": None} == {"pool": 5, "processed": 5, "kept": 1, "rewritten": 0, "dropped": 2,
                                            "failed": 2, "skipped_invalid": 0, "balance": None}
    asked = health(server)["chat_completions"] - before
    assert asked == 2 * 2 + 3 * 2  # synthesis of 2 prompts and checks of 3, each asked and re-asked once
    kept = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["complement"] for r in kept] == [GOOD] and kept[0]["check"]["verdict"] == "keep"
    assert kept[0]["check"]["llm"].startswith("unavailable: validation") and kept[0]["category"] == "math"
    dropped = {r["complement"]: r["check"] for r in map(json.loads, (tmp_path / "pas.jsonl.dropped.jsonl").read_text().splitlines())}
    assert "answers_prompt:opener,worked_result,no_guidance" in dropped[ANSWERS]["reason"]
    assert "too_long" in dropped[" ".join(["Consider"] * 60)]["rule_problems"]
    failed = [json.loads(x) for x in (tmp_path / "pas.jsonl.failed.jsonl").read_text().splitlines()]
    assert {f["step"] for f in failed} == {"synthesis"} and all("validation" in f["error"] for f in failed)
    assert summary["balance"]["counts"]["math"] == 1 and summary["balance"]["total"] == 1
    assert json.loads((tmp_path / "pas.jsonl.summary.json").read_text())["kept"] == 1

    again = run_build_data(cfg, console_print=lambda *a: None)
    assert again["processed"] == 2 and again["failed"] == 2 and again["kept"] == 0  # only the failed ones retried
    assert health(server)["chat_completions"] - before == asked  # all from the cache
    assert len(out.read_text().splitlines()) == 1


CATS_YAML = """\
- name: math
  description: Calculations and word problems.
  style: Step-by-step derivation with the final answer marked.
- name: planning
  description: Itineraries and schedules.
  style: Ordered steps, constraints respected.
"""
TAUGHT_SEED = Seed("Plan a trip.", "Order the days, respect the budget and note a rainy-day option.", "planning")
SYNTH_REPLY = json.dumps({"category": "math", "complement": ANSWERS})
CHECK_REPLY = json.dumps({"verdict": "rewrite", "problems": ["answers_prompt"],
                          "reason": "It answers the prompt instead of complementing it.", "rewrite": GOOD})


@pytest.fixture(scope="module")
def taught_server(tiny_model_dir, tmp_path_factory):
    """`novalign serve` of a tiny model taught by SFT (here, ~10 s) to reply to every synthesis request with a
    complement that answers the prompt, and to every check request with a valid rewrite verdict: a stand-in
    LLM whose replies parse, so the three steps run end to end over HTTP."""
    from novalign.config import SFTConfig
    from novalign.train.sft import run_sft

    work = tmp_path_factory.mktemp("taught")
    (work / "cats.yaml").write_text(CATS_YAML)
    cats = load_categories(work / "cats.yaml")
    seeds = [TAUGHT_SEED]
    rows = []
    for i in range(12):
        prompt = f"What is {i + 2} times {i + 7}?" if i % 2 else f"Plan {i + 1} days in city number {i}."
        synth = synthesis_messages(prompt, cats, seeds, max_words=40)
        check = check_messages(prompt, ANSWERS, cats[0], rule_problems(ANSWERS))  # as build-data will ask
        rows.append({"messages": synth + [{"role": "assistant", "content": SYNTH_REPLY}]})
        rows.append({"messages": check + [{"role": "assistant", "content": CHECK_REPLY}]})
    (work / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SFTConfig.model_validate({
        "output_dir": str(work / "run"), "model": {"path": str(tiny_model_dir), "gradient_checkpointing": "off"},
        "data": {"train_files": [str(work / "sft.jsonl")], "max_length": 1024, "train_on": "last"},
        "packing": {"enabled": False}, "optim": {"lr": 5e-3, "warmup_ratio": 0.05, "weight_decay": 0.0},
        "train": {"max_steps": 120, "micro_batch_size": 8, "grad_accum": 1, "progress": False, "tensorboard": False,
                  "device": "cpu"}})
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sft(cfg, console_print=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    proc, url, _ = start_server(["serve", "--model", str(work / "run" / "model"), "--port", "0", "--served-model-name",
                                 "taught", "--set", "engine.default_max_tokens=160"], "novalign serve:")
    yield url, work / "cats.yaml"
    stop(proc)


def test_three_steps_end_to_end_rewrite_an_answer(taught_server, tmp_path):
    """Synthesis returns a complement that answers the prompt (parsed, category validated); the rules flag it
    and the LLM check's rewrite -- itself passing the rules -- replaces it, keeping the original and reason."""
    url, cats = taught_server
    (tmp_path / "seeds.jsonl").write_text(json.dumps(TAUGHT_SEED.__dict__) + "\n")
    (tmp_path / "pool.jsonl").write_text(json.dumps({"prompt": "What is 6 times 11?"}) + "\n")
    llm = {"backend": "openai", "base_url": url, "model": "taught", "no_cache": True, "progress": False,
           "max_attempts": 1, "structured_attempts": 2}
    cfg = PASDataConfig.model_validate({
        "pool_files": [str(tmp_path / "pool.jsonl")], "output": str(tmp_path / "pas.jsonl"), "categories": str(cats),
        "seeds": str(tmp_path / "seeds.jsonl"), "shots": 1, "temperature": 0.0, "max_tokens": 160, "llm": llm})
    summary = run_build_data(cfg, console_print=lambda *a: None)
    assert (summary["rewritten"], summary["failed"], summary["dropped"]) == (1, 0, 0), summary
    record = json.loads((tmp_path / "pas.jsonl").read_text())
    assert record["complement"] == GOOD and record["category"] == "math"  # category chosen by the LLM
    check = record["check"]
    assert check["verdict"] == "rewrite" and check["original"] == ANSWERS and check["llm_verdict"] == "rewrite"
    assert check["rule_problems"] == ["answers_prompt:opener,worked_result,no_guidance"]
    assert "answers the prompt" in check["reason"]


def test_pas_train_data_from_records(tmp_path):
    """`pas train` input: each record becomes template(prompt) -> complement (the RAG template when it has
    search keywords); a dropped record or a missing complement is an error naming file, line and field."""
    from novalign.pas.train import write_pas_sft_file

    template, rag = load_text(None, "template.txt"), load_text(None, "template_rag.txt")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": SPEED, "complement": GOOD, "category": "math"}) + "\n"
                    + json.dumps({"prompt": "Q", "complement": "Keep to the sources.", "search_keywords": ["k1"]}) + "\n")
    n = write_pas_sft_file([str(good)], tmp_path / "sft.jsonl", template, rag)
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert n == 2 and rows[0]["messages"][1] == {"role": "assistant", "content": GOOD}
    assert rows[0]["messages"][0]["content"] == template.replace("{prompt}", SPEED)
    assert "<Search keywords>\nk1\n<User prompt>\nQ" in rows[1]["messages"][0]["content"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "complement": "b"}) + "\n"
                   + json.dumps({"prompt": "a", "complement": "b", "check": {"verdict": "drop"}}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*2.*check.verdict"):
        write_pas_sft_file([str(bad)], tmp_path / "x.jsonl", template, rag)
    bad.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl.*1.*complement"):
        write_pas_sft_file([str(bad)], tmp_path / "x.jsonl", template, rag)


def test_build_data_resume_drops_a_torn_line_and_decides_a_repeated_prompt_once(tmp_path):
    """Pool: P1, P1 again, P2, P3 (each with the GOOD complement, so only the check step asks). The output an
    interrupted run left holds P3 and a torn line for P2. The rerun: P3 done (1), the torn P2 line dropped and
    counted (dropped_truncated 1), P1's repeat decided once (repeated_prompts 1), so 2 check requests (P1, P2),
    both kept by the scripted 'keep' verdict. The output is then P3, P1, P2 as whole lines; no failed file."""
    from scripted_llm import ScriptedLLM

    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": p, "category": "math", "complement": GOOD} for p in ("P1", "P1", "P2", "P3")]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pas.jsonl"
    out.write_text(json.dumps({"prompt": "P3", "category": "math", "complement": GOOD, "check": {}}) + "\n"
                   + '{"prompt": "P2", "comple')
    llm = ScriptedLLM(lambda route, messages: json.dumps({"verdict": "keep", "reason": "fine"}))
    client = llm.client("check")
    cfg = PASDataConfig.model_validate({"pool_files": [str(pool)], "output": str(out),
                                        "llm": {"base_url": llm.base_url("check"), "model": "check"}})
    try:
        summary = run_build_data(cfg, console_print=lambda *a: None, client=client)
    finally:
        client.close()
        llm.close()
    assert summary | {"balance": None} == {"pool": 4, "processed": 2, "kept": 2, "rewritten": 0, "dropped": 0,
                                            "failed": 0, "skipped_invalid": 0, "repeated_prompts": 1,
                                            "dropped_truncated": 1, "balance": None}
    assert len(llm.bodies["check"]) == 2
    prompts = [json.loads(x)["prompt"] for x in out.read_text().splitlines()]
    assert prompts[0] == "P3" and sorted(prompts[1:]) == ["P1", "P2"]
    assert not (tmp_path / "pas.jsonl.failed.jsonl").exists()
