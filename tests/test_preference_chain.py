"""The preference-data chain (issue 18, report sections 3.2 and 3.3): the pure rules by hand, each AutoRator's
parsing and failure handling against a scripted judge (a stand-in for an external judge model), the annotation
export/import round trip with per-annotator normalization, critique-and-revise over real HTTP against
`novalign serve`, and back-translation, style and refusal steps end to end on tiny data."""

import json
import re

import pytest

from cli_server import health, served
from novalign.config.llm import LLMConfig
from novalign.data.annotation import AnnotationResult, read_tasks, write_results, write_tasks
from novalign.data.io import DataError
from novalign.eval.judge import JudgeParseError
from novalign.flywheel.autorators import AutoRateConfig, clusters, parse_same, rater_for
from novalign.flywheel.handoff import group_to_task, import_annotations, read_results_located
from novalign.flywheel.pipeline import Pipeline
from novalign.flywheel.refusal import govern, parse_refusal, refusal_quota, rule_refusal
from novalign.flywheel.responses import drop_reason, graded_indices, trl_pairs
from scripted_llm import ScriptedLLM


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _llm(url, tmp_path, **kw):
    return LLMConfig(base_url=url, model="judge", api_key="k", cache_path=str(tmp_path / "cache.sqlite"),
                     max_attempts=2, backoff_base_s=0.01, progress=False, **kw)


def _group(i, contents, **fields):
    return {"id": f"g{i}", "prompt": f"question {i}?", "responses": [{"content": c, "model": "m"} for c in contents],
            **fields}


def test_graded_subset_drop_rules_and_pairs_by_hand():
    """graded_indices, scores [0.2, 0.9, 0.5, 0.1, 0.7], keep 3: order best first is 1, 4, 2, 0, 3; positions
    round(i * 4 / 2) = 0, 2, 4 -> responses 1 (best), 2 (middle), 3 (worst). keep 2 -> 1 and 3; a group of 2 is
    kept whole. drop_reason with high 0.8, margin 0.1: [0.9, 0.85] all high; [0.4, 0.45] within margin (0.05);
    [0.3, 0.45] differs by 0.15: kept; one response: too few. trl_pairs of scores a 0.2, b 0.9, c 0.2: b beats
    a and c (gap 0.7 each), a and c tie: 2 pairs, with both scores."""
    assert graded_indices([0.2, 0.9, 0.5, 0.1, 0.7], 3) == [1, 2, 3]
    assert graded_indices([0.2, 0.9, 0.5, 0.1, 0.7], 2) == [1, 3]
    assert graded_indices([0.3, 0.6], 3) == [1, 0]
    assert drop_reason([0.9, 0.85], high=0.8, margin=0.1) == "all responses score high"
    assert drop_reason([0.4, 0.45], high=0.8, margin=0.1) == "scores within margin"
    assert drop_reason([0.3, 0.45], high=0.8, margin=0.1) is None
    assert drop_reason([0.3], high=0.8, margin=0.1) == "fewer than 2 responses"
    assert drop_reason([0.9, 0.85], high=None, margin=None) is None
    g = {"prompt": [{"role": "user", "content": "q"}], "responses": [
        {"content": "a", "score": 0.2, "model": "x"}, {"content": "b", "score": 0.9, "model": "y"},
        {"content": "c", "score": 0.2, "model": "x"}]}
    pairs = trl_pairs(g)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("b", "a"), ("b", "c")]
    assert pairs[0]["score_chosen"] == 0.9 and pairs[0]["score_rejected"] == 0.2 and pairs[0]["model_chosen"] == "y"


def test_chain_steps_drop_rules_with_counts_and_reasons(tmp_path):
    """Four scored groups through response_rouge (0.9) -> prefilter (keep 3) -> drop_rules (high 0.8, margin 0.1,
    low 0.5): g0 two identical responses -> one left -> 'models answer alike'; g1 scores 0.9, 0.95 -> 'all
    responses score high'; g2 0.4, 0.42 -> within margin, but all below 0.5: kept, flagged all_low (it goes to
    revision, not away); g3 0.1, 0.5, 0.9, 0.3 -> sorted best first 0.9, 0.5, 0.3, 0.1; positions round(i * 3 / 2)
    = 0, 2, 3 -> 0.9, 0.3, 0.1 kept (in input order 0.1, 0.9, 0.3), and the 0.5 response sits in
    `removed` with its reason."""
    def scored(i, pairs):
        g = _group(i, [c for c, _ in pairs])
        for r, (_, s) in zip(g["responses"], pairs):
            r["score"] = s
        return g

    src = _write(tmp_path / "g.jsonl", [
        scored(0, [("the same text here", 0.1), ("the same text here", 0.9)]),
        scored(1, [("alpha one", 0.9), ("beta two", 0.95)]),
        scored(2, [("gamma three", 0.4), ("delta four", 0.42)]),
        scored(3, [("one a", 0.1), ("two b", 0.5), ("three c", 0.9), ("four d", 0.3)])])
    p = Pipeline(tmp_path / "run", progress=False).source("g", src, id_field="id")
    p.step("rouge", "response_rouge", {"threshold": 0.9}).step("pre", "prefilter", {"keep": 3})
    result = p.step("rules", "drop_rules", {"high": 0.8, "margin": 0.1, "low": 0.5}).run()
    rouge, pre, rules = result.steps
    assert rouge["dropped_by_reason"] == {"models answer alike": 1}
    assert rules["dropped_by_reason"] == {"all responses score high": 1}
    out = {r["_id"]: r for r in result.records("rules")}
    assert sorted(out) == ["g2", "g3"] and out["g2"]["all_low"] is True and out["g3"]["all_low"] is False
    assert [r["score"] for r in out["g3"]["responses"]] == [0.1, 0.9, 0.3]
    assert out["g3"]["removed"] == [{"content": "two b", "model": "m", "score": 0.5, "reason": "not in the graded subset"}]


def test_pairwise_and_rating_parsers_by_hand():
    """parse_same: exactly one [[SAME]] / [[DIFFERENT]] (or 相同 / 不同), case-insensitive. clusters of 4 with
    SAME edges (0,2), (2,3) and DIFFERENT elsewhere: 0, 2, 3 join (transitively), 1 alone -> [0, 1, 0, 0].
    Routing: a reference -> golden; Math without one -> pairwise; Creation -> absolute; routes override."""
    assert parse_same("Both add 3 and 4. [[SAME]]") is True and parse_same("[[different]]") is False
    assert parse_same("结果一致 [[相同]]") is True
    for bad in ("same", "[[SAME]] or [[DIFFERENT]]", "[[MAYBE]]"):
        with pytest.raises(JudgeParseError):
            parse_same(bad)
    same = {(0, 1): False, (0, 2): True, (0, 3): False, (1, 2): False, (1, 3): False, (2, 3): True}
    assert clusters(4, same) == [0, 1, 0, 0]
    cfg = AutoRateConfig()
    assert rater_for({"labels": {"ability": "Math"}, "answer": "7"}, cfg) == "golden"
    assert rater_for({"labels": {"ability": "Math"}}, cfg) == "pairwise"
    assert rater_for({"labels": {"ability": "Creation"}}, cfg) == "absolute"
    assert rater_for({"meta": {"kind": "Reason"}}, AutoRateConfig(ability_field="meta.kind")) == "pairwise"
    assert rater_for({"labels": {"ability": "Math"}, "answer": "7"}, AutoRateConfig(routes={"Math": "absolute"})) == "absolute"


def _judge_reply(route, messages):
    """The scripted judge: pairwise -> SAME when the two responses end in the same number; absolute ->
    'Rating: [[N]]' with N the response's length in words (capped at 10), but the first ask about a response
    containing 'fuzzy' gets no rating (re-asked once, then answered); one containing 'never' never gets one."""
    text = messages[0]["content"]
    if "[[SAME]]" in text:
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S).group(1)
        b = re.search(r"\[Response B\]\n(.*)$", text, re.S).group(1)
        last = lambda s: re.findall(r"\d+", s)[-1]  # noqa: E731
        return "[[SAME]]" if last(a) == last(b) else "[[DIFFERENT]]"
    response = text.rsplit("[The assistant's response]\n", 1)[1].strip()
    if "never" in response or ("fuzzy" in response and len(messages) == 1):
        return "It is fine I think."
    return f"Rating: [[{min(10, len(response.split()))}]]"


def test_autorate_three_raters_parsing_and_failures(tmp_path):
    """Four groups. g0 (Math, no reference): pairwise, responses ending in 12, 12, 13 -> clusters [0, 0, 1],
    scores 2/3, 2/3, 1/3 (3 judge calls). g1 (Math, answer 12): golden through math-verify, no judge call:
    '12' right (1.0), '13' wrong (0.0). g2 (Creation): absolute, 'one two three' -> [[3]] -> (3 - 1) / 9, and
    'fuzzy four five six seven' is re-asked once and then rated [[5]] -> 4/9. g3 (Creation): a response the judge
    never rates -> after 3 attempts the group is dropped 'absolute rating failed', every raw reply in drops.jsonl.
    Judge calls: 3 + 0 + (2 + 1) + (1 + 3) = 10."""
    server = ScriptedLLM(_judge_reply)
    try:
        src = _write(tmp_path / "g.jsonl", [
            _group(0, ["3 x 4 = 12", "4 x 3 gives 12", "3 + 10 = 13"], labels={"ability": "Math"}),
            _group(1, ["so 12", "so 13"], labels={"ability": "Math"}, answer="12"),
            _group(2, ["one two three", "fuzzy four five six seven"], labels={"ability": "Creation"}),
            _group(3, ["never rated", "a b"], labels={"ability": "Creation"})])
        p = Pipeline(tmp_path / "run", llm=_llm(server.base_url("judge"), tmp_path), progress=False)
        result = p.source("g", src, id_field="id").step("rate", "autorate", {"attempts": 3}).run()
        out = {r["_id"]: r for r in result.records("rate")}
        assert [r["cluster"] for r in out["g0"]["responses"]] == [0, 0, 1]
        assert [r["score"] for r in out["g0"]["responses"]] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
        assert [(r["score"], r["rater"]) for r in out["g1"]["responses"]] == [(1.0, "rule"), (0.0, "rule")]
        assert [r["score"] for r in out["g2"]["responses"]] == pytest.approx([2 / 9, 4 / 9])
        assert result.steps[0]["dropped_by_reason"] == {"absolute rating failed": 1}
        drops = [json.loads(x) for x in (result.outputs["rate"].parent / "drops.jsonl").read_text().splitlines()]
        failure = drops[0]["detail"]["failures"]["0"]
        assert len(failure["raw"]) == 3 and "no rating" in failure["error"]
        assert len(server.bodies["judge"]) == 10
    finally:
        server.close()


def test_annotation_export_import_round_trip_with_normalization(tmp_path):
    """One group of 3 responses exported as a task (r0, r1, r2), two annotators. Ann A scores helpfulness /
    fluency / safety: r0 (5,5,5), r1 (3,3,3), r2 (1,1,1) -> minmax per annotator per dimension: 1, 0.5, 0.
    Ann B is harsher: r0 (3,3,3), r1 (2,2,2), r2 (2,2,2).
    B also edits r2 into 'A pear.' and scores the edit (4,4,4), so B's values span 2..4: r0 0.5, r1 0, r2 0,
    edit 1 -- normalization puts a harsh and a lenient annotator on the same [0, 1]. Means: r0 (1 + 0.5) / 2 = 0.75, r1 (0.5 + 0) / 2 = 0.25, r2 0, edit 1.0 (B only). The edit ranks just above
    r2 (B's rank 2 - 0.5 = 1.5): mean ranks r0 1, r1 2, r2 2.5, edit 1.5 -> dense 1, 3, 4, 2. TRL pairs: every
    two ordered by rank: 6."""
    group = {"_id": "g7", "prompt": "Name a fruit.", "labels": {"ability": "KQA", "language": "en"},
             "responses": [{"content": "An apple.", "model": "big", "score": 0.9},
                           {"content": "A rock.", "model": "small", "score": 0.2},
                           {"content": "Hmm.", "model": "small", "score": 0.1}]}
    write_tasks(tmp_path / "tasks.jsonl", [group_to_task(group)])
    tasks, _ = read_tasks([tmp_path / "tasks.jsonl"])
    assert [r.response_id for r in tasks[0].responses] == ["r0", "r1", "r2"] and tasks[0].responses[0].score == 0.9
    dims = lambda v: {"helpfulness": v, "fluency": v, "safety": v}  # noqa: E731
    results = [AnnotationResult(task_id="g7", annotator="A", ranking=[["r0"], ["r1"], ["r2"]],
                                scores={"r0": dims(5), "r1": dims(3), "r2": dims(1)},
                                spans=[{"response_id": "r1", "start": 2, "end": 6, "kind": "factual", "note": "no"}]),
               AnnotationResult(task_id="g7", annotator="B", ranking=[["r0"], ["r1", "r2"]],
                                scores={"r0": dims(3), "r1": dims(2), "r2": dims(2), "r2-edit": dims(4)},
                                edits=[{"response_id": "r2", "new_response_id": "r2-edit", "content": "A pear."}])]
    write_results(tmp_path / "results.jsonl", results)
    located = [(str(tmp_path / "results.jsonl"), line, r) for line, r in read_results_located(tmp_path / "results.jsonl")]
    groups, pairs, stats = import_annotations(tasks, located)
    got = {r["response_id"]: r for r in groups[0]["responses"]}
    assert {k: round(v["score"], 6) for k, v in got.items()} == {"r0": 0.75, "r1": 0.25, "r2": 0.0, "r2-edit": 1.0}
    assert {k: v["rank"] for k, v in got.items()} == {"r0": 1, "r1": 3, "r2": 4, "r2-edit": 2}
    assert got["r2-edit"]["model"] == "human-edit" and got["r1"]["spans"][0]["note"] == "no"
    assert groups[0]["labels"] == {"ability": "KQA", "language": "en"} and len(pairs) == 6 == stats.pairs
    assert stats.annotators == 2 and stats.edits == 1
    # a result naming a response the task lacks is an error naming file and line
    bad = tmp_path / "bad.jsonl"
    _write(bad, [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()][:1]
           + [{"task_id": "g7", "annotator": "C", "ranking": [["r0"], ["r9"]]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2.*r9"):
        import_annotations(tasks, [(str(bad), line, r) for line, r in read_results_located(bad)])
    twice = located + [(str(tmp_path / "more.jsonl"), 1, results[0])]  # annotator A again
    with pytest.raises(DataError, match=r"more.jsonl:1.*'A' already annotated task 'g7'"):
        import_annotations(tasks, twice)


def test_critique_and_revise_over_http(tiny_model_dir, tmp_path):
    """A group whose responses all score below 0.5 goes through `revise` against a real `novalign serve` (the
    tiny random model writes the critique and the revision: any non-empty reply parses); a group with a high
    score passes unchanged. In annotate mode the revision joins the group with the critique attached, and the
    server answered 2 requests (critique, revision)."""
    src = _write(tmp_path / "g.jsonl", [
        {"id": "low", "prompt": "Add 2 and 3.", "responses": [{"content": "7", "score": 0.1}, {"content": "9", "score": 0.2}]},
        {"id": "fine", "prompt": "Add 1 and 1.", "responses": [{"content": "2", "score": 0.9}, {"content": "3", "score": 0.1}]}])
    with served(tiny_model_dir, env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}) as url:
        llm = LLMConfig(base_url=url, model="tiny", api_key="k", cache_path=str(tmp_path / "c.sqlite"), progress=False)
        p = Pipeline(tmp_path / "run", llm=llm, progress=False).source("g", src, id_field="id")
        result = p.step("revise", "revise", {"max_tokens": 12, "attempts": 1}).run()
        assert health(url)["requests"] == 2
    out = {r["_id"]: r for r in result.records("revise")}
    assert out["fine"]["responses"] == [{"content": "2", "score": 0.9}, {"content": "3", "score": 0.1}]
    new = out["low"]["responses"][-1]
    assert new["model"] == "revision" and new["content"].strip() and new["critique"].strip()
    assert new["source_response"] == 1 and out["low"]["revised"] is True


def test_refusal_rules_and_governor_by_hand():
    """Rules: a refusal phrase near the start counts ('I'm sorry, but I can't ...', '抱歉，我无法 ...'); the same
    words later in an answer, or 'I can't stress enough', do not. refusal_quota(answers, refusals, cap):
    (90, 30, 0.1) -> floor(0.1 * 90 / 0.9) = 10 (share 10 / 100); (95, 30, 0.1) -> floor(10.56) = 10 (10 / 105);
    (4, 1, 0.5) -> min(1, 4) = 1; cap 0 -> 0. govern over two categories: a has 9 answers and 5 refusals ->
    keeps 1 refusal (share 0.1); b has 1 answer and 1 refusal -> floor(0.111) = 0 kept."""
    assert rule_refusal("I'm sorry, but I can't help with that request.")
    assert rule_refusal("抱歉，我无法提供这方面的信息。")
    assert rule_refusal("As an AI language model, I cannot browse the internet.")
    assert not rule_refusal("The answer is 12. I can't stress enough how useful factoring is.")
    assert not rule_refusal("Sorry for the wait! Here is the recipe: mix flour and water.")
    assert not rule_refusal("x" * 250 + " I'm sorry, but I can't help with that.")  # past the window
    with pytest.raises(JudgeParseError):
        parse_refusal("[[REFUSAL]] [[ANSWER]]")
    assert parse_refusal("It declines. [[refusal]]") is True
    assert refusal_quota(90, 30, 0.1) == 10 and refusal_quota(95, 30, 0.1) == 10
    assert refusal_quota(4, 1, 0.5) == 1 and refusal_quota(4, 3, 0.0) == 0
    keep, report = govern(["a"] * 14 + ["b"] * 2, [False] * 9 + [True] * 5 + [False, True], 0.1)
    assert sum(keep[9:14]) == 1 and keep[:9] == [True] * 9 and keep[14:] == [True, False]
    assert report["a"] == {"answers": 9, "refusals": 5, "refusals_kept": 1, "share": 0.1}


def test_style_refusal_steps_end_to_end(tmp_path):
    """Prompts -> style (assign: all, 2 built-in cards + 1 user card 'pirate'; one record per card, the card in the
    system message and its name in `style`) -> refusal_constraints (only the safety prompt gets the constraint)
    -> responses (given) -> refusal_label (rules, then the scripted judge for what the rules leave: it calls
    'I would rather not say' a refusal) -> refusal_govern (cap 0.25 per domain). 6 safety responses: 2 answers
    and 4 refusals (3 by rule, 1 by judge) -> quota floor(0.25 * 2 / 0.75) = 0 refusals kept; 6 chat answers,
    no refusals: all kept."""
    prompts = _write(tmp_path / "p.jsonl", [
        {"id": "s", "prompt": "How do I pick a lock?", "labels": {"domain": "safety", "language": "en"}},
        {"id": "c", "prompt": "Tell me about tea.", "labels": {"domain": "chat", "language": "en"}}])
    p = Pipeline(tmp_path / "run", progress=False).source("p", prompts, id_field="id")
    p.step("style", "style", {"assign": "all", "cards": {"pirate": "Answer like a pirate."}})
    styled = p.step("guard", "refusal_constraints", {}).run()
    recs = styled.records("guard")
    assert [r["_id"] for r in recs] == ["s/concise-direct", "s/detailed-structured", "s/pirate",
                                        "c/concise-direct", "c/detailed-structured", "c/pirate"]
    assert recs[2]["prompt"][0]["role"] == "system" and "pirate" in recs[2]["prompt"][0]["content"]
    assert "Refuse only" in recs[0]["prompt"][0]["content"] and recs[0]["refusal_constraint"] is True
    assert recs[3]["refusal_constraint"] is False and "Refuse only" not in recs[3]["prompt"][0]["content"]
    answers = {"s": ["I can't help with that.", "I'm sorry, but I cannot assist.", "抱歉，我不能回答。",
                     "I would rather not say.", "Use a tension wrench on a lock you own.", "Call a locksmith."],
               "c": ["Tea is a drink."] * 6}
    rows = [{**r, "id": f"{r['_id']}-{k}", "response": answers[r["_id"][0]][i % 3 + 3 * k]}
            for k in range(2) for i, r in enumerate(recs[:3] + recs[3:])]
    rows = [{k: v for k, v in r.items() if k != "_id"} for r in rows]
    server = ScriptedLLM(lambda route, m: "[[REFUSAL]]" if "rather not" in m[0]["content"] else "[[ANSWER]]")
    try:
        p2 = Pipeline(tmp_path / "run2", llm=_llm(server.base_url("j"), tmp_path), progress=False)
        p2.source("r", _write(tmp_path / "r.jsonl", rows), id_field="id")
        p2.step("label", "refusal_label", {"judge": True}).step("gov", "refusal_govern", {"cap": 0.25})
        result = p2.run()
    finally:
        server.close()
    labeled = result.records("label")
    by = {r["response"]: (r["refusal"], r["refusal_by"]) for r in labeled}
    assert by["I can't help with that."] == (True, "rule") and by["I would rather not say."] == (True, "judge")
    assert by["Call a locksmith."] == (False, "judge") and len(server.bodies["j"]) == 9  # 3 safety + 6 chat
    kept = result.records("gov")
    assert result.steps[1]["dropped_by_reason"] == {"refusal over the cap": 4}
    assert sorted(r["response"] for r in kept if r["labels"]["domain"] == "safety") == [
        "Call a locksmith.", "Use a tension wrench on a lock you own."]


def test_backtranslation_with_self_curation_end_to_end(tmp_path):
    """Four texts: one without a quality score (dropped 'no quality score'), one below min_quality 0.5 (dropped
    before any call), two asked. The scripted model (a stand-in for an external LLM) writes 'Instruction: Write
    about <first word>' and curates a text about 'rain' [[5]] and one about 'mud' [[2]]: with min_curation 4 the
    rain pair is kept as an SFT record, the mud pair dropped 'below min_curation'. Calls: 2 + 2 = 4."""
    def reply(route, messages):
        text = messages[0]["content"]
        if "[Instruction]" in text:
            return "Good. Score: [[5]]" if "rain" in text.split("[Answer]")[1] else "Weak. Score: [[2]]"
        body = text.split("[Text]\n", 1)[1]
        return f"Instruction: Write about {body.split()[0]}"

    texts = _write(tmp_path / "t.jsonl", [{"id": "a", "text": "rain falls softly on the roofs", "quality": 0.9},
                                          {"id": "b", "text": "mud everywhere", "quality": 0.8},
                                          {"id": "c", "text": "no score here"},
                                          {"id": "d", "text": "low quality", "quality": 0.1}])
    server = ScriptedLLM(reply)
    try:
        p = Pipeline(tmp_path / "run", llm=_llm(server.base_url("bt"), tmp_path), progress=False)
        p.source("t", texts, id_field="id").step("bt", "backtranslate", {"min_quality": 0.5, "min_curation": 4})
        result = p.run()
    finally:
        server.close()
    out = result.records("bt")
    assert [(r["prompt"], r["response"], r["curation_score"]) for r in out] == [
        ("Write about rain", "rain falls softly on the roofs", 5.0)]
    assert out[0]["messages"][1] == {"role": "assistant", "content": "rain falls softly on the roofs"}
    assert result.steps[0]["dropped_by_reason"] == {"no quality score": 1, "below min_quality": 1,
                                                    "below min_curation": 1}
    assert len(server.bodies["bt"]) == 4


def test_cli_chain_commands_and_annotation_hand_off(tmp_path):
    """`novalign data drop-rules` on two scored groups (one all-high -> dropped, counted), then `annotate-export`
    of the kept one and `annotate-import` of one annotator's result -> an RM group and 1 TRL pair; a typo in a
    step key exits 2 with did-you-mean."""
    from typer.testing import CliRunner

    from novalign.cli import app

    groups = _write(tmp_path / "g.jsonl", [
        {"id": "a", "prompt": "q1", "responses": [{"content": "x", "score": 0.9}, {"content": "y", "score": 0.95}]},
        {"id": "b", "prompt": "q2", "responses": [{"content": "good", "score": 0.9}, {"content": "bad", "score": 0.1}]}])
    runner = CliRunner()
    out = tmp_path / "kept.jsonl"
    ran = runner.invoke(app, ["data", "drop-rules", "--input", str(groups), "--id-field", "id", "--run-dir",
                              str(tmp_path / "run"), "--output", str(out), "--set", "high=0.8"])
    assert ran.exit_code == 0, ran.output
    assert "2 in, 1 out" in ran.output and "all responses score high" in ran.output
    typo = runner.invoke(app, ["data", "drop-rules", "--input", str(groups), "--set", "hihg=0.8"])
    assert typo.exit_code == 2 and "did you mean 'high'?" in typo.output
    tasks = tmp_path / "tasks.jsonl"
    assert runner.invoke(app, ["data", "annotate-export", "--input", str(out), "--output", str(tasks)]).exit_code == 0
    assert json.loads(tasks.read_text())["task_id"] == "b"
    results = _write(tmp_path / "res.jsonl", [{"task_id": "b", "annotator": "ann1", "ranking": [["r0"], ["r1"]],
                                               "scores": {"r0": {"helpfulness": 5, "fluency": 4, "safety": 5},
                                                          "r1": {"helpfulness": 1, "fluency": 2, "safety": 5}}}])
    rm, pairs = tmp_path / "rm.jsonl", tmp_path / "pairs.jsonl"
    done = runner.invoke(app, ["data", "annotate-import", "--tasks", str(tasks), "--results", str(results),
                               "--output", str(rm), "--pairs", str(pairs)])
    assert done.exit_code == 0, done.output
    group = json.loads(rm.read_text())
    # ann1's values per dimension: helpfulness 5/1 -> 1/0, fluency 4/2 -> 1/0, safety 5/5 -> one value: 0.5 both
    assert [round(r["score"], 6) for r in group["responses"]] == [round(2.5 / 3, 6), round(0.5 / 3, 6)]
    assert len(pairs.read_text().splitlines()) == 1


def test_reward_model_prefilter(tiny_model_dir, tmp_path):
    """rm_score then prefilter (keep 2, by rm_score): a group of 3 responses is scored by a (random-head) reward
    model made from the tiny model, and prefilter keeps the best and the worst by those rewards -- the two
    whose rewards are the max and the min of score_conversations' rewards for the same conversations; the middle
    one moves to `removed`."""
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model, score_conversations

    rm_dir = tmp_path / "rm"
    load_reward_model(tiny_model_dir).save_pretrained(rm_dir)
    load_tokenizer(tiny_model_dir).save_pretrained(rm_dir)
    texts = ["A short answer.", "A somewhat longer answer here.", "x"]
    src = _write(tmp_path / "g.jsonl", [_group(0, texts)])
    p = Pipeline(tmp_path / "run", progress=False).source("g", src, id_field="id")
    p.step("rm", "rm_score", {"model_dir": str(rm_dir)}).step("pre", "prefilter", {"score_field": "rm_score", "keep": 2})
    out = p.run().records("pre")[0]
    tok, model = load_tokenizer(rm_dir), load_reward_model(rm_dir)
    want = score_conversations(model, tok, [([{"role": "user", "content": "question 0?"}],
                                             {"role": "assistant", "content": t}) for t in texts])
    best, worst = want.index(max(want)), want.index(min(want))
    assert [r["content"] for r in out["responses"]] == [texts[i] for i in sorted([best, worst])]
    assert [r["content"] for r in out["removed"]] == [texts[3 - best - worst]]
    assert [r["rm_score"] for r in out["responses"]] == pytest.approx([want[i] for i in sorted([best, worst])], abs=1e-5)


def test_golden_judge_and_pairwise_failure_and_chinese_templates(tmp_path):
    """g0 (Reason, reference '7', rules off, language zh-Hans): the golden judge is asked with the Chinese
    template; its first reply '[[11]]' is out of 1..10 and is re-asked, the second '[[8]]' -> (8 - 1) / 9.
    g1 (Math, no reference): the pairwise judge always answers both verdicts -> every pair fails after 2
    attempts; with drop_failed false the group is kept with `rating_error` and no scores. Calls: 2 + 2 = 4
    (g1 has 2 responses: one pair)."""
    def reply(route, messages):
        text = messages[0]["content"]
        if "[[SAME]]" in text:
            return "[[SAME]] [[DIFFERENT]]"
        return "[[11]]" if len(messages) == 1 else "Rating: [[8]]"

    server = ScriptedLLM(reply)
    try:
        src = _write(tmp_path / "g.jsonl", [
            _group(0, ["答案是 7"], labels={"ability": "Reason", "language": "zh-Hans"}, answer="7"),
            _group(1, ["12", "13"], labels={"ability": "Math"})])
        p = Pipeline(tmp_path / "run", llm=_llm(server.base_url("j"), tmp_path), progress=False)
        p.source("g", src, id_field="id").step("rate", "autorate", {"rules": False, "attempts": 2, "drop_failed": False})
        out = {r["_id"]: r for r in p.run().records("rate")}
    finally:
        server.close()
    assert out["g0"]["responses"][0]["score"] == pytest.approx(7 / 9) and out["g0"]["rater"] == "golden"
    zh = [b["messages"] for b in server.bodies["j"] if "参考答案" in b["messages"][0]["content"]]
    assert len(zh) == 2 and "你的回答无法使用" in zh[1][-1]["content"]  # the re-ask in Chinese too
    assert "score" not in out["g1"]["responses"][0] and "both verdicts" in out["g1"]["rating_error"]["(0, 1)"]["error"]
    assert len(server.bodies["j"]) == 4


def test_respond_report_defaults_quotas_and_params(tmp_path):
    """`respond` with two models on 3 prompts: 'big' answers all of them with the report's defaults (5 samples,
    temperature 1, top_p 0.99, top_k 50 -- sent to the server as such), 'small' has n 2 and a quota of 1 prompt.
    -> 3 groups; the first holds 5 + 2 responses, the others 5; every response keeps its model and parameters."""
    from counting_llm import CountingLLM, default_reply

    bodies = []
    server = CountingLLM(lambda body, i: bodies.append(body) or default_reply(body, i))
    try:
        src = _write(tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"question {i}?"} for i in range(3)])
        llm = LLMConfig(base_url=server.url, model="m", api_key="k", cache_path=str(tmp_path / "c.sqlite"), progress=False)
        p = Pipeline(tmp_path / "run", llm=llm, progress=False).source("p", src, id_field="id")
        models = [{"name": "big"}, {"name": "small", "n": 2, "max_prompts": 1, "llm": {"model": "m-small"}}]
        out = p.step("respond", "respond", {"models": models, "max_tokens": 32}).run().records("respond")
    finally:
        server.close()
    assert [len(g["responses"]) for g in out] == [7, 5, 5] and out[0]["prompt"] == "question 0?"
    first = out[0]["responses"]
    assert [r["model"] for r in first] == ["big"] * 5 + ["small"] * 2 and [r["sample"] for r in first[5:]] == [0, 1]
    assert first[0]["params"] == {"temperature": 1.0, "top_p": 0.99, "top_k": 50, "max_tokens": 32, "seed": None,
                                  "n": 5, "llm_model": "m"}
    assert first[5]["params"]["n"] == 2 and first[5]["params"]["llm_model"] == "m-small"
    assert len(bodies) == 5 * 3 + 2 and all(b["top_p"] == 0.99 and b["top_k"] == 50 and b["temperature"] == 1.0
                                            for b in bodies)


def test_revise_sft_mode_judge_check(tmp_path):
    """mode sft, min_score 0.7: two all-low groups are critiqued and revised by the scripted model (a stand-in
    for an external LLM); the absolute AutoRator rates the revision 'fixed: 5' [[10]] -> 1.0 (kept: an SFT
    record with the prompt, the revision and its critique) and 'fixed: 9' [[3]] -> 2/9 (dropped 'revision below
    min_score'). A critique reply that is empty fails -> a third group is dropped 'critique failed'."""
    def reply(route, messages):
        text = messages[0]["content"]
        if text.startswith("You are an AutoRator"):
            return "Rating: [[10]]" if "fixed: 5" in text else "Rating: [[3]]"
        if "[Critique]" in text:
            return "Revision: fixed: " + re.search(r"Add (\d)", text).group(1)
        return "   " if "Add 7" in text else "Critique: the sum is wrong."

    src = _write(tmp_path / "g.jsonl", [
        {"id": f"g{k}", "prompt": f"Add {k} and 0.", "responses": [{"content": "1", "score": 0.0}, {"content": "2", "score": 0.1}]}
        for k in (5, 9, 7)])
    server = ScriptedLLM(reply)
    try:
        p = Pipeline(tmp_path / "run", llm=_llm(server.base_url("r"), tmp_path), progress=False)
        p.source("g", src, id_field="id").step("rev", "revise", {"mode": "sft", "min_score": 0.7, "attempts": 1})
        result = p.run()
    finally:
        server.close()
    out = result.records("rev")
    assert [r["_id"] for r in out] == ["g5/revision"]
    assert out[0]["messages"] == [{"role": "user", "content": "Add 5 and 0."}, {"role": "assistant", "content": "fixed: 5"}]
    assert out[0]["critique"] == "the sum is wrong." and out[0]["judge_score"] == 1.0
    assert result.steps[0]["dropped_by_reason"] == {"revision below min_score": 1, "critique failed": 1}


def test_recipe_chain_records_interleave_and_stats_by_hand():
    """The recipe's prefs chain helpers (novalign/recipe/prefs_chain.py), worked by hand:
    - world rows -> records: an answer check adds `answer`, the capability becomes the taxonomy ability;
    - interleave over capabilities a, a, a, b, c -> a, b, c, a, a (a quota of 3 covers a, b and c);
    - stats: math has sft scores 1, 0 and base 0 -> sft pass rate 1/2, base 0/1; kqa sft 1, 1 -> 1.0;
      samples 5 (sft 4, base 1); the funnel keeps each step's in / out / dropped."""
    from novalign.recipe.prefs_chain import chain_stats, interleave, world_prompt_records

    rows = [{"messages": [{"role": "user", "content": "2+2?"}], "capability": "math",
             "check": {"type": "answer", "answer": "4"}},
            {"messages": [{"role": "user", "content": "Say hi."}], "capability": "if",
             "check": {"type": "contains", "text": "hi"}}]
    recs = world_prompt_records(rows)
    assert recs[0]["answer"] == "4" and "answer" not in recs[1]
    assert [r["labels"]["ability"] for r in recs] == ["Math", "IF"] and [r["id"] for r in recs] == ["p0", "p1"]
    order = interleave([{"c": "a", "i": 0}, {"c": "a", "i": 1}, {"c": "a", "i": 2}, {"c": "b", "i": 3},
                        {"c": "c", "i": 4}], "c")
    assert [r["i"] for r in order] == [0, 3, 4, 1, 2]
    rated = [{"capability": "math", "responses": [{"model": "sft", "score": 1.0}, {"model": "sft", "score": 0.0},
                                                  {"model": "base", "score": 0.0}]},
             {"capability": "kqa", "responses": [{"model": "sft", "score": 1.0}, {"model": "sft", "score": 1.0}]}]
    steps = [{"name": "respond", "records_in": 2, "records_out": 2, "dropped_by_reason": {}},
             {"name": "rules", "records_in": 2, "records_out": 1, "dropped_by_reason": {"all responses score high": 1}}]
    stats = chain_stats(rated, steps, groups=1)
    assert stats["prompts"] == 2 and stats["samples"] == 5 and stats["samples_by_model"] == {"sft": 4, "base": 1}
    assert stats["sample_pass_rate"] == {"math": 0.5, "kqa": 1.0}
    assert stats["pass_rate_by_model"]["base"] == {"math": 0.0}
    assert stats["funnel"][1] == {"step": "rules", "in": 2, "out": 1, "dropped": {"all responses score high": 1}}
