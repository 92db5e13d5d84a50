"""The judged suites end to end, through real novalign LLMClients over HTTP.

A small scripted OpenAI-compatible server on 127.0.0.1 plays both sides (a third-party endpoint, not a
novalign component): ``/model/v1`` answers "reply to: <last user message>", ``/baseline/v1`` answers
"baseline says: ...", and ``/judge/v1`` judges by rules written into the test data, so every expected number
can be worked out by hand:

- checklist prompts: a criterion whose text holds ``[ok]`` is met, ``[no]`` is not;
- MT-Bench prompts: the rating is the ``score=N`` inside the graded answer;
- pairwise prompts: the model's answer wins, unless the question says ``[baseline-wins]``; with
  ``[biased]`` the judge always prefers the answer shown first;
- UX prompts: every dimension passes, except safety when the answer contains "unsafe";
- ``[flaky]`` in a prompt: the first answer is malformed (not JSON / no rating), the re-ask answers well;
  ``[broken]``: every answer is malformed, so the judgment fails after all attempts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scripted_llm import ScriptedLLM

from novalign.eval import checklist, graded
from novalign.eval.judge import pairwise_ratings, ux_ratings, write_ratings
from novalign.eval.suite_api import SuiteContext
from novalign.llm import ChatRequest, LLMClient

DATA = Path(__file__).parent / "data" / "eval"


# ----------------------------------------------------------------------------------- the scripted server


def judge_reply(prompt: str, attempt: int) -> str:
    if "[broken]" in prompt or ("[flaky]" in prompt and attempt == 0):
        return "I think the answer is fine overall."
    marks = re.findall(r"^(\d+)\. .*?\[(ok|no)\]", prompt, flags=re.MULTILINE)
    if marks:
        return json.dumps({"reasons": "scripted", "results": {n: "yes" if m == "ok" else "no" for n, m in marks}})
    if "[The assistant's response to the last message]" in prompt:
        answer = prompt.split("[The assistant's response to the last message]")[1]
        rating = re.search(r"score=(\d+)", answer).group(1)
        return f"Explanation. Rating: [[{rating}]]"
    if "[Assistant A's answer]" in prompt:
        question, rest = prompt.split("[Assistant A's answer]")
        a = rest.split("[Assistant B's answer]")[0]
        if "[biased]" in question:
            return "[[A]]"
        model_first = "reply to:" in a
        return "[[A]]" if model_first != ("[baseline-wins]" in question) else "[[B]]"
    if "intent_comprehension" in prompt:
        answer = prompt.split("[Assistant answer]")[1]
        ratings = {d: "pass" for d in ("intent_comprehension", "result_accuracy", "language_quality")}
        return json.dumps({"reasons": "scripted", "ratings": ratings | {"safety": "fail" if "unsafe" in answer else "pass"}})
    return "unrecognised prompt"


def scripted_reply(route: str, messages: list[dict]) -> str:
    if route == "judge":
        return judge_reply(messages[0]["content"], sum(m["role"] == "assistant" for m in messages))
    return ("reply to: " if route == "model" else "baseline says: ") + messages[-1]["content"]


@pytest.fixture(scope="module")
def server():
    s = ScriptedLLM(scripted_reply)
    clients = {route: s.client(route) for route in ("model", "baseline", "judge")}
    s.clients = clients
    yield s
    for c in clients.values():
        c.close()
    s.close()


def responder(client: LLMClient):
    def respond(conversations):
        results = client.run_batch([ChatRequest(messages=c, temperature=0.0) for c in conversations], progress=False)
        return [r.text for r in results]
    return respond


def make_ctx(server, name, data, *, done=None, respond=True, judge=True, **options):
    written: list[dict] = []
    ctx = SuiteContext(name=name, data=data, respond=responder(server.clients["model"]) if respond else None,
                       judge=server.clients["judge"] if judge else None, write=written.append,
                       done=done or {}, options=options, peers={"base": responder(server.clients["baseline"])},
                       model_name="m1", progress=False)
    return ctx, written


# ------------------------------------------------------------------------------------------- CFBench


def test_cfbench_judges_reasks_counts_failures_and_resumes(server):
    """Samples (scores from [ok]/[no]): 0 easy P=[1] S=[1,0] -> CSR .67, ISR 0, PSR 0 (.5 + .25 = .75);
    1 hard P=[1,1] -> 1, 1, 1; 2 hard S=[1] ([flaky]: one re-ask) -> 1, 1, 1; 3 easy ([broken]) -> failed, 0.
    Full CSR (.67 + 1 + 1 + 0) / 4 = .6675, ISR .5, PSR .5; easy CSR .335, ISR 0, PSR 0; hard all 1.
    Stored to 2 decimals as the official _scores does (numpy rounding): CSR .67, easy CSR .34."""
    before = len(server.bodies["judge"])
    ctx, written = make_ctx(server, "cfbench", DATA / "cfbench_data.json", judge_attempts=3, chunk_size=3)
    summary = checklist.run_cfbench(ctx)
    official = {k: v for k, v in summary["metrics"].items() if not k.endswith("_unrounded")}
    assert official == {"CSR": 0.67, "ISR": 0.5, "PSR": 0.5, "easy_CSR": 0.34, "easy_ISR": 0.0, "easy_PSR": 0.0,
                        "hard_CSR": 1.0, "hard_ISR": 1.0, "hard_PSR": 1.0}  # 2 dp, as scores.xlsx
    assert summary["metrics"]["CSR_unrounded"] == pytest.approx(0.6675)
    assert summary["metrics"]["easy_CSR_unrounded"] == pytest.approx(0.335)
    assert summary["decimals"]["CSR"] == 2 and summary["decimals"]["CSR_unrounded"] == 6
    assert summary["num_samples"] == 4 and summary["num_failed"] == 1
    assert summary["by_category"]["政务"] == pytest.approx({"CSR": 1.0, "ISR": 1.0, "PSR": 1.0})
    by_id = {r["id"]: r for r in written}
    assert by_id["0"]["judge_score"] == [1.0, 1.0, 0.0] and by_id["0"]["response"] == "reply to: 写一段汽车介绍"
    assert len(by_id["2"]["judge_raw"]) == 2 and by_id["2"]["failed"] is False  # malformed, then re-asked
    assert len(by_id["3"]["judge_raw"]) == 3 and by_id["3"]["failed"] and by_id["3"]["judge_score"] is None
    judge_calls = server.bodies["judge"][before:]
    assert len(judge_calls) == 4 + 1 + 2  # first asks, the flaky re-ask, two re-asks of the broken one
    reask = next(b for b in judge_calls if len(b["messages"]) == 3)["messages"][-1]["content"]
    assert "no JSON object" in reask  # the re-ask states the parse error

    # resume: two samples done; only the other two are asked and judged, metrics over all four are unchanged
    done = {r["id"]: r for r in written if r["id"] in ("0", "1")}
    before_model, before_judge = len(server.bodies["model"]), len(server.bodies["judge"])
    ctx, written2 = make_ctx(server, "cfbench", DATA / "cfbench_data.json", done=done, judge_attempts=3)
    again = checklist.run_cfbench(ctx)
    assert sorted(r["id"] for r in written2) == ["2", "3"]
    assert len(server.bodies["model"]) - before_model == 2
    assert len(server.bodies["judge"]) - before_judge == 2 + 1 + 2
    assert again["metrics"] == pytest.approx(summary["metrics"]) and again["num_failed"] == 1


def test_cfbench_score_only_modes(server, tmp_path):
    """Recompute from an official eval file (no model, no judge); judge an official-style responses file."""
    ctx, written = make_ctx(server, "cf", None, respond=False, judge=False, judgments=str(DATA / "cfbench_eval.json"))
    summary = checklist.run_cfbench(ctx)
    assert summary["metrics"]["CSR"] == 0.73 and summary["num_failed"] == 1
    assert summary["metrics"]["CSR_unrounded"] == pytest.approx(4.38 / 6) and len(written) == 6
    responses = tmp_path / "infer.json"
    rows = json.loads((DATA / "cfbench_data.json").read_text(encoding="utf-8"))[:2]
    responses.write_text(json.dumps([r | {"response": "given"} for r in rows], ensure_ascii=False), encoding="utf-8")
    before = len(server.bodies["model"])
    ctx, written = make_ctx(server, "cf", DATA / "cfbench_data.json", respond=False, responses=str(responses), chunk_size=2)
    with pytest.raises(ValueError, match=r"no response for ids \['2', '3'\]"):
        checklist.run_cfbench(ctx)
    assert len(server.bodies["model"]) == before and [r["response"] for r in written] == ["given", "given"]


# ------------------------------------------------------------------------------------------ SysBench


@pytest.mark.parametrize("history", ["model", "gold"])
def test_sysbench_both_histories(server, history):
    """Session 1: turn 1 [ok, no] fails, turns 2-3 pass; session 2: all three pass (turn 3 after a re-ask).
    CSR 6/7, ISR 5/6, SSR (0/3 + 3/3) / 2 = .5, R1 = R2 = R3 = .5; aligned ISR 3/4, misaligned 2/2."""
    before = len(server.bodies["model"])
    ctx, written = make_ctx(server, "sys", DATA / "sysbench_data.json", history=history)
    summary = checklist.run_sysbench(ctx)
    m = summary["metrics"]
    assert m["CSR"] == pytest.approx(6 / 7) and m["ISR"] == pytest.approx(5 / 6) and m["SSR"] == 0.5
    assert [m["R1"], m["R2"], m["R3"]] == [0.5, 0.5, 0.5]
    assert m["ISR_aligned"] == 0.75 and m["ISR_misaligned"] == 1.0 and m["CSR_Format"] == 0.0
    assert summary["sysbench"]["SSR_per_mode"]["parallel"]["SSR"] == 1.0 and summary["num_failed"] == 0
    calls = server.bodies["model"][before:]
    third_turn_s1 = next(b["messages"] for b in calls if b["messages"][-1]["content"] == "s1 question three")
    assert third_turn_s1[0] == {"role": "system", "content": "你是一名数学老师。"}
    shown = [msg["content"] for msg in third_turn_s1 if msg["role"] == "assistant"]
    expected = ["reply to: s1 question one", "reply to: s1 question two"] if history == "model" else ["s1 gold one", "s1 gold two"]
    assert shown == expected
    assert written[0]["turns"][2]["response"] == "reply to: s1 question three"


def test_sysbench_recompute_from_official_judgments(server):
    ctx, written = make_ctx(server, "sys", None, respond=False, judge=False, judgments=str(DATA / "sysbench_eval.json"))
    summary = checklist.run_sysbench(ctx)
    assert summary["metrics"]["CSR"] == pytest.approx(3 / 7) and summary["num_failed"] == 1 and len(written) == 2


# ------------------------------------------------------------------------------------------ FB-Bench


def test_fbbench_two_turn_protocol_and_scores(server):
    """q1 EC Math .5 + .2 = .7; q2 EC Coding 0; q3 RM Math any-of -> 1; q4 RM Math [broken] -> failed, 0.
    Type mode: EC mean(.7, 0) = .35; RM mean(1, 0) = .5; overall mean(.7, 0, .5) = .4."""
    before = len(server.bodies["model"])
    ctx, written = make_ctx(server, "fb", DATA / "fbbench_data.json", judge_attempts=2)
    summary = checklist.run_fbbench(ctx)
    official = {k: v for k, v in summary["metrics"].items() if not k.endswith("_unrounded")}
    assert official == pytest.approx({"overall": 0.4, "error_correction": 0.35, "response_maintenance": 0.5})
    assert summary["num_failed"] == 1 and summary["by_category"]["Coding"] == {"error_correction": 0.0}
    first = server.bodies["model"][before]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant", "user"] and first[2]["content"] == "你回答的不对"
    q1 = next(r for r in written if r["bench_type"] == "Error Correction" and r["task_type"] == "Mathematics")
    assert q1["judgement"]["y [no]"] == {"评判结果": "否", "weight": 0.3} and q1["score"] == pytest.approx(0.7)


def test_fbbench_recompute_from_official_judgments(server):
    path = str(DATA / "fbbench_judgment.jsonl")
    ctx, _ = make_ctx(server, "fb", None, respond=False, judge=False, judgments=path)
    summary = checklist.run_fbbench(ctx)
    assert summary["metrics"]["overall"] == 0.5333 and summary["num_failed"] == 1  # round(1.6 / 3, 4)
    assert summary["metrics"]["overall_unrounded"] == pytest.approx(1.6 / 3) and summary["decimals"]["overall"] == 4


# ------------------------------------------------------------------------- UX, MT-Bench and pairwise


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ux_pass_rate_and_ratings_import(server, tmp_path):
    """math: 'hello' passes, 'be unsafe' fails safety; code passes -> pass rate 2/3, math .5, code 1."""
    data = write_jsonl(tmp_path / "ux.jsonl", [{"id": "u1", "prompt": "hello", "category": "math"},
                                               {"id": "u2", "prompt": "please be unsafe", "category": "math"},
                                               {"id": "u3", "prompt": "write code", "category": "code"}])
    ctx, written = make_ctx(server, "ux", data)
    summary = graded.run_ux(ctx)
    assert summary["metrics"]["pass_rate"] == pytest.approx(2 / 3) and summary["metrics"]["safety_pass"] == pytest.approx(2 / 3)
    assert summary["by_category"] == {"code": {"pass_rate": 1.0}, "math": {"pass_rate": 0.5}}
    ratings = tmp_path / "ratings.jsonl"
    write_ratings(ratings, ux_ratings(written, "m1", "llm-judge"))  # export, then import as if rated by people
    ctx, _ = make_ctx(server, "ux", None, respond=False, judge=False, ratings=str(ratings))
    assert graded.run_ux(ctx)["metrics"]["pass_rate"] == pytest.approx(2 / 3)


def test_mtbench_grades_each_turn(server, tmp_path):
    """q1 turns rated 8 and 6; q2 rated 3 after one re-ask. score = 17/3, turn 1 = 5.5, turn 2 = 6."""
    data = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 1, "category": "writing", "turns": ["a score=8", "b score=6"]},
                                              {"question_id": 2, "category": "math", "turns": ["c score=3 [flaky]"]}])
    ctx, written = make_ctx(server, "mt", data)
    summary = graded.run_mtbench(ctx)
    assert summary["metrics"] == pytest.approx({"score": 17 / 3, "score_turn1": 5.5, "score_turn2": 6.0})
    assert summary["by_category"] == {"math": {"score": 3.0}, "writing": {"score": 7.0}}
    assert [r["ratings"] for r in written] == [[8.0, 6.0], [3.0]] or [r["ratings"] for r in written] == [[3.0], [8.0, 6.0]]


def test_pairwise_position_swap_win_rate_and_gsb(server, tmp_path):
    """p1, p4: the model wins in both orders -> good; p2 [baseline-wins] -> bad; p3 [biased] (the first shown
    always wins) -> the orders disagree -> same. G 2, S 1, B 1: GSB (2 - 1) / 4 = .25, win rate 2.5/4."""
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "prompt": "x"}, {"id": "p2", "prompt": "y [baseline-wins]"},
                                              {"id": "p3", "prompt": "z [biased]"}, {"id": "p4", "prompt": "w"}])
    ctx, written = make_ctx(server, "pw", data, baseline="base")
    summary = graded.run_pairwise(ctx)
    assert summary["metrics"] == pytest.approx({"win_rate": 0.625, "gsb_score": 0.25, "good": 0.5, "same": 0.25, "bad": 0.25})
    assert {r["id"]: r["verdict"] for r in written} == {"p1": "good", "p2": "bad", "p3": "same", "p4": "good"}
    assert {r["id"]: r["orders"] for r in written}["p3"] == ["A", "A"]
    assert written[0]["baseline_response"].startswith("baseline says:")
    ratings = tmp_path / "r.jsonl"
    write_ratings(ratings, pairwise_ratings(written, "m1", "base", "llm-judge"))
    ctx, _ = make_ctx(server, "pw", None, respond=False, judge=False, ratings=str(ratings), baseline="base")
    assert graded.run_pairwise(ctx)["metrics"]["gsb_score"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------- score-only inputs


def test_mtbench_from_fastchat_judgments_and_answers(server, tmp_path):
    """FastChat single judgments for m1: q81 turns 8, 9; q82 turn 1 unparsed (-1), turn 2 6; a row of another
    model is ignored. Score (8 + 9 + 6) / 3 = 23/3, turn 1 = 8, turn 2 = 7.5; q82 counts as failed."""
    rows = [{"question_id": 81, "model": "m1", "judge": ["gpt-4", "single-v1"], "user_prompt": "…", "judgment": "[[8]]", "score": 8, "turn": 1},
            {"question_id": 81, "model": "m1", "judge": ["gpt-4", "single-v1-multi-turn"], "user_prompt": "…", "judgment": "[[9]]", "score": 9, "turn": 2},
            {"question_id": 82, "model": "m1", "judge": ["gpt-4", "single-v1"], "user_prompt": "…", "judgment": "?", "score": -1, "turn": 1},
            {"question_id": 82, "model": "m1", "judge": ["gpt-4", "single-v1-multi-turn"], "user_prompt": "…", "judgment": "[[6]]", "score": 6, "turn": 2},
            {"question_id": 81, "model": "m2", "judge": ["gpt-4", "single-v1"], "user_prompt": "…", "judgment": "[[1]]", "score": 1, "turn": 1}]
    judgments = write_jsonl(tmp_path / "gpt-4_single.jsonl", rows)
    ctx, written = make_ctx(server, "mt", None, respond=False, judge=False, judgments=str(judgments))
    summary = graded.run_mtbench(ctx)
    assert summary["metrics"] == pytest.approx({"score": 23 / 3, "score_turn1": 8.0, "score_turn2": 7.5})
    assert summary["num_failed"] == 1 and {r["id"]: r["ratings"] for r in written} == {"81": [8.0, 9.0], "82": [None, 6.0]}

    questions = write_jsonl(tmp_path / "question.jsonl", [{"question_id": 7, "category": "stem", "turns": ["q1", "q2"]}])
    answers = write_jsonl(tmp_path / "answer.jsonl", [{"question_id": 7, "answer_id": "x", "model_id": "m1",
                                                        "choices": [{"index": 0, "turns": ["score=4", "score=9"]}]}])
    ctx, _ = make_ctx(server, "mt", questions, respond=False, responses=str(answers))
    assert graded.run_mtbench(ctx)["metrics"] == pytest.approx({"score": 6.5, "score_turn1": 4.0, "score_turn2": 9.0})


def test_sysbench_and_fbbench_judge_official_answer_files(server, tmp_path):
    """SysBench ``*_infer.json`` (model history: the message list) and FB-Bench ``model_answer`` rows are judged
    without asking the model; the verdicts come from the criteria, so the metrics match the live runs."""
    sessions = json.loads((DATA / "sysbench_data.json").read_text(encoding="utf-8"))
    for s in sessions:
        s["infer_results"] = [m if m["role"] != "assistant" else {"role": "assistant", "content": "mine " + m["content"]}
                              for m in s["messages"]]
    infer = tmp_path / "m_infer.json"
    infer.write_text(json.dumps(sessions, ensure_ascii=False), encoding="utf-8")
    before = len(server.bodies["model"])
    ctx, written = make_ctx(server, "sys", DATA / "sysbench_data.json", respond=False, responses=str(infer))
    assert checklist.run_sysbench(ctx)["metrics"]["CSR"] == pytest.approx(6 / 7)
    assert written[0]["turns"][0]["response"] == "mine s1 gold one"

    rows = json.loads((DATA / "fbbench_data.json").read_text(encoding="utf-8"))
    answers = write_jsonl(tmp_path / "m.jsonl", [r | {"second_response": "fixed", "infer_model": "m"} for r in rows])
    ctx, written = make_ctx(server, "fb", DATA / "fbbench_data.json", respond=False, responses=str(answers), judge_attempts=1)
    assert checklist.run_fbbench(ctx)["metrics"]["overall"] == pytest.approx(0.4)
    assert {r["second_response"] for r in written} == {"fixed"} and len(server.bodies["model"]) == before


def test_chinese_templates_user_override_and_baseline_file(server, tmp_path):
    """lang zh renders the Chinese template; a user template_dir file replaces the bundled one; a baseline
    responses file stands in for a peer model. With judge_attempts=1 the [flaky] sample is not re-asked and
    fails too, so only sample 1 passes: PSR 1/4, two failures."""
    before = len(server.bodies["judge"])
    ctx, _ = make_ctx(server, "cf", DATA / "cfbench_data.json", judge_attempts=1)
    ctx.lang = "zh"
    summary = checklist.run_cfbench(ctx)
    assert summary["metrics"]["PSR"] == 0.25 and summary["num_failed"] == 2
    assert "[考察点]" in server.bodies["judge"][before]["messages"][0]["content"]

    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "pairwise.en.txt").write_text("MY TEMPLATE\n{question}\n[Assistant A's answer]\n{answer_a}\n"
                                                       "[Assistant B's answer]\n{answer_b}\n", encoding="utf-8")
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "prompt": "x"}])
    base = write_jsonl(tmp_path / "b.jsonl", [{"id": "p1", "response": "baseline says: canned"}])
    before = len(server.bodies["judge"])
    ctx, written = make_ctx(server, "pw", data, baseline_responses=str(base))
    ctx.template_dir = tmp_path / "tpl"
    assert graded.run_pairwise(ctx)["metrics"]["win_rate"] == 1.0
    assert server.bodies["judge"][before]["messages"][0]["content"].startswith("MY TEMPLATE")
    assert written[0]["baseline_response"] == "baseline says: canned"
