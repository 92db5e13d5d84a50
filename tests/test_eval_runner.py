"""`novalign eval`: config validation, the ifeval / math / code suites on hand-worked responses, resume after a
kill, the report, and end to end against a tiny model served by `novalign serve` (which also judges).

One server process (the real CLI, tiny model, greedy) serves the module's server tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from cli_server import health, served
from typer.testing import CliRunner

from novalign.cli import app
from novalign.config import ConfigError, EvalConfig, load_config
from novalign.data.io import DataError
from novalign.eval.report import write_report
from novalign.eval.runner import read_done, run_eval

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
ASSETS = Path(__file__).resolve().parents[1] / "novalign" / "assets" / "eval"
IFEVAL_SAMPLE = ASSETS / "ifeval_sample.jsonl"
CFBENCH_SAMPLE = ASSETS / "cfbench_sample.json"
KEY = "eval-key"
DATA = Path(__file__).parent / "data" / "eval"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, tree: dict) -> EvalConfig:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return load_config(EvalConfig, path)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ config


def test_config_validation(tmp_path):
    """Unknown suite types, two sources for one model, repeated names and unknown keys are config errors that
    name the key; a suite's name defaults to its type; missing data is reported before any generation."""
    with pytest.raises(ConfigError, match="unknown suite type 'ifevl'"):
        config(tmp_path, {"models": [{"name": "m", "responses": "r.jsonl"}], "suites": [{"type": "ifevl"}]})
    with pytest.raises(ConfigError, match="give one of path / llm / responses, not path and llm"):
        config(tmp_path, {"models": [{"name": "m", "path": "x", "llm": {"model": "y"}}]})
    with pytest.raises(ConfigError, match="model names must be unique; repeated: m"):
        config(tmp_path, {"models": [{"name": "m", "path": "x"}, {"name": "m", "path": "y"}]})
    with pytest.raises(ConfigError, match=r"suites\.0\.optoins: unknown key"):
        config(tmp_path, {"suites": [{"type": "math", "optoins": {}}]})
    cfg = config(tmp_path, {"models": [{"name": "m", "responses": str(tmp_path)}],
                            "suites": [{"type": "math", "data": str(tmp_path / "missing.jsonl")},
                                       {"type": "pkg.mod:my_suite"}],
                            "judge": {"backend": "openai", "model": "j", "lang": "zh"},
                            "output_dir": str(tmp_path / "out")})
    assert [s.name for s in cfg.suites] == ["math", "my_suite"]
    assert cfg.models[0].temperature == 0.0 and cfg.judge.lang == "zh" and cfg.judge.max_reasks == 2
    cfg.suites = cfg.suites[:1]
    with pytest.raises(FileNotFoundError, match="suite 'math': data file not found: .*missing.jsonl"):
        run_eval(cfg)
    assert not (tmp_path / "out").exists()  # nothing was started


# ---------------------------------------------------------------------------------------- scoring suites


def test_suite_types_validate_without_importing_the_eval_layer():
    """config/ is the bottom layer: checking a suite type reads the registry's names in config/eval.py and
    loads nothing of novalign.eval (a fresh interpreter, so that no other test's imports count)."""
    import subprocess
    import sys

    code = ("import sys; from novalign.config import EvalConfig; "
            "EvalConfig.model_validate({'suites': [{'type': 'math'}, {'type': 'ifeval'}]}); "
            "print(sorted(m for m in sys.modules if m.startswith('novalign.eval')))")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.stdout.strip() == "[]"


def test_ifeval_suite_on_a_responses_file(tmp_path):
    """Score-only IFEval, worked by hand:

    p1 no_comma, "No commas here"                 -> strict pass, loose pass
    p2 quotation, 'Sure:\\n"the moon is bright"'   -> strict fail (starts with "Sure:"), loose pass (first line cut)
    p3 keyword "cat" + fewer than 5 words, "A cat sat on the warm mat" (7 words) -> keyword pass, words fail

    strict: prompt-level 1/3, instruction-level 2/4;  loose: prompt-level 2/3 (exactly 2 of 3 prompts pass),
    instruction-level 3/4.  Per instruction (strict / loose): no_comma 1/1, quotation 0/1, existence 1/1,
    number_words 0/0.
    """
    data = write_jsonl(tmp_path / "in.jsonl", [
        {"key": 1, "prompt": "p1", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 2, "prompt": "p2", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
        {"key": 3, "prompt": "p3", "instruction_id_list": ["keywords:existence", "length_constraints:number_words"],
         "kwargs": [{"keywords": ["cat"]}, {"num_words": 5, "relation": "less than"}]},
    ])
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"prompt": "p1", "response": "No commas here"},
        {"prompt": "p2", "response": 'Sure:\n"the moon is bright"'},
        {"prompt": "p3", "response": "A cat sat on the warm mat"},
    ])
    cfg = config(tmp_path, {"models": [{"name": "given", "responses": str(responses)}],
                            "suites": [{"type": "ifeval", "data": str(data)}], "output_dir": str(tmp_path / "out")})
    summary = run_eval(cfg)["given"]["ifeval"]
    assert summary["metrics"] == pytest.approx({"prompt_level_strict": 1 / 3, "instruction_level_strict": 0.5,
                                                "prompt_level_loose": 2 / 3, "instruction_level_loose": 0.75})
    assert summary["by_category"]["startend:quotation"] == {"strict": 0.0, "loose": 1.0}
    assert summary["by_category"]["length_constraints:number_words"] == {"strict": 0.0, "loose": 0.0}
    rows = records(tmp_path / "out" / "given" / "ifeval.jsonl")
    assert [(r["id"], r["strict"], r["loose"], r["failed"]) for r in rows] == [
        ("1", [True], [True], False), ("2", [False], [True], False), ("3", [True, False], [True, False], False)]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["given"]["ifeval"]["num_samples"] == 3


def test_math_suite_accuracy_per_category(tmp_path):
    """Three problems, hand-checked: "\\boxed{0.5}" vs gold \\frac{1}{2} -> correct; "The answer is 72." vs a
    GSM8K gold "... #### 72" -> correct; "I think it is 4" vs 3 -> wrong. Accuracy 2/3; algebra (problems 1
    and 3) 1/2, arithmetic 1/1. Problem 3 is given as `messages` and matched by the whole conversation."""
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 2?"}]
    data = write_jsonl(tmp_path / "math.jsonl", [
        {"id": "half", "prompt": "Half of one?", "answer": "\\frac{1}{2}", "category": "algebra"},
        {"id": "eggs", "prompt": "How many eggs?", "answer": "6 * 12 = 72\n#### 72", "category": "arithmetic"},
        {"id": "sum", "messages": conv, "answer": 3, "category": "algebra"},
    ])
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"prompt": "Half of one?", "response": "So it is \\boxed{0.5}."},
        {"prompt": "How many eggs?", "response": "The answer is 72."},
        {"messages": conv, "response": "I think it is 4"},
    ])
    cfg = config(tmp_path, {"models": [{"name": "given", "responses": str(responses)}],
                            "suites": [{"type": "math", "data": str(data)}], "output_dir": str(tmp_path / "out")})
    summary = run_eval(cfg)["given"]["math"]
    assert summary["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["by_category"] == {"algebra": {"accuracy": 0.5}, "arithmetic": {"accuracy": 1.0}}
    rows = {r["id"]: r for r in records(tmp_path / "out" / "given" / "math.jsonl")}
    assert rows["half"]["extracted"] == "0.5" and rows["eggs"]["answer"] == "72" and rows["sum"]["correct"] is False


def test_math_data_errors_name_file_line_field(tmp_path):
    data = write_jsonl(tmp_path / "math.jsonl", [{"id": 1, "prompt": "a", "answer": "1"}, {"id": 2, "prompt": "b"}])
    (tmp_path / "responses").mkdir()  # a folder: one <suite name>.jsonl per suite
    write_jsonl(tmp_path / "responses" / "math.jsonl", [{"prompt": "a", "response": "1"}])
    cfg = config(tmp_path, {"models": [{"name": "given", "responses": str(tmp_path / "responses")}],
                            "suites": [{"type": "math", "data": str(data)}], "output_dir": str(tmp_path / "out")})
    with pytest.raises(DataError, match=r"math\.jsonl:2: field 'answer': missing"):
        run_eval(cfg)


def test_code_suite_pass_at_1_in_the_sandbox(tmp_path):
    """Three problems, one reply each: a correct fenced solution, a wrong one (its assert fails) and one that
    loops forever (killed at the 2 s wall limit). pass@1 = 1/3; category "easy" (problems 1, 2) 1/2, "loop" 0."""
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    data = write_jsonl(tmp_path / "code.jsonl", [
        {"id": "a", "prompt": "Write add.", "tests": tests, "category": "easy"},
        {"id": "b", "prompt": "Write add, again.", "tests": tests, "category": "easy"},
        {"id": "c", "prompt": "Write add, third.", "tests": tests, "category": "loop"},
    ])
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"prompt": "Write add.", "response": "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."},
        {"prompt": "Write add, again.", "response": "```python\ndef add(a, b):\n    return a - b\n```"},
        {"prompt": "Write add, third.", "response": "```python\ndef add(a, b):\n    while True:\n        pass\n```"},
    ])
    cfg = config(tmp_path, {"models": [{"name": "given", "responses": str(responses)}],
                            "suites": [{"type": "code", "data": str(data), "options": {"timeout_s": 2}}],
                            "output_dir": str(tmp_path / "out")})
    summary = run_eval(cfg)["given"]["code"]
    assert summary["metrics"] == {"pass@1": pytest.approx(1 / 3)}
    assert summary["by_category"] == {"easy": {"pass@1": 0.5}, "loop": {"pass@1": 0.0}}
    rows = {r["id"]: r for r in records(tmp_path / "out" / "given" / "code.jsonl")}
    assert rows["a"]["passed"] == [True] and rows["b"]["reasons"] == ["exit code 1"]
    assert rows["c"]["passed"] == [False] and rows["c"]["reasons"][0] != "passed"
    again = run_eval(cfg)["given"]["code"]  # resumed: stored verdicts reused, nothing run or asked again
    assert again["metrics"] == summary["metrics"] and again["resume"] == {"reused": 3, "written": 0, "model_requests": 0,
                                                                        "judge_requests": 0, "dropped_truncated": 0}
    cfg.suites[0].options["n"] = 2  # n > 1 samples; a responses file cannot
    cfg.suites[0].name = "code2"
    with pytest.raises(ValueError, match="n=2 needs a model that samples"):
        run_eval(cfg)


# ------------------------------------------------------------------------------------------------ resume


def test_read_done_drops_a_truncated_last_line_and_rejects_other_damage(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"id": "1", "category": "c", "failed": false}\n{"id": "2", "category": "c", "failed": false}\n'
                     b'{"id": "3", "categ')
    with caplog.at_level(logging.WARNING, logger="novalign.eval"):
        done, dropped = read_done(path)
    assert sorted(done) == ["1", "2"] and dropped == 1
    assert "s.jsonl:3: dropped a truncated last record" in caplog.text
    assert path.read_bytes().endswith(b'false}\n')  # cut, so appending continues on a fresh line
    path.write_bytes(b'{"id": "1"}\n{"id": "2"}')  # complete last record, only the newline missing: kept
    assert (sorted(read_done(path)[0]), read_done(path)[1]) == (["1", "2"], 0)
    path.write_bytes(b'{"id": "1"}\nnot json\n{"id": "2"}\n')  # damage inside the file is an error, with its line
    with pytest.raises(DataError, match=r"s\.jsonl:2: malformed JSON"):
        read_done(path)
    path.write_bytes(b'{"id": "1"}\n{"id": "1"}\n')
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'id': id '1' written twice"):
        read_done(path)


# ------------------------------------------------------------------------------------------------ report


def test_report_tables_and_charts(tmp_path):
    summaries = {
        "base": {"math": {"metrics": {"accuracy": 0.25}, "by_category": {"algebra": {"accuracy": 0.5},
                                                                         "geometry": {"accuracy": 0.0}},
                          "num_samples": 4, "num_failed": 0, "splits": {"hard": {"accuracy": 0.0}}}},
        "sft": {"math": {"metrics": {"accuracy": 0.75}, "by_category": {"algebra": {"accuracy": 1.0},
                                                                        "geometry": {"accuracy": 0.5}},
                         "num_samples": 4, "num_failed": 1}},
    }
    report = write_report(summaries, tmp_path).read_text()
    assert "| metric | base | sft |" in report and "| accuracy | 0.250 | 0.750 |" in report
    assert "| failed (not judged) | 0 | 1 |" in report
    assert "| hard accuracy | 0.000 | - |" in report  # a nested summary key, missing for one model
    assert "| algebra | 0.500 | 1.000 |" in report and "| geometry | 0.000 | 0.500 |" in report
    for chart in ("charts/math__overall.png", "charts/math__accuracy.png"):
        assert f"]({chart})" in report
        assert (tmp_path / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_decimals_and_chinese_charts(tmp_path):
    """A suite's ``decimals`` set the places (CFBench's official 2, 6 for the unrounded twin, which is not
    charted); Chinese category names render with the packaged CJK font: no missing-glyph warning."""
    import warnings

    summaries = {"m": {"cf": {"metrics": {"CSR": 0.84, "CSR_unrounded": 0.845}, "num_samples": 4, "num_failed": 0,
                              "by_category": {"汽车": {"CSR": 0.84}, "政务": {"CSR": 0.5}},
                              "decimals": {"CSR": 2, "CSR_unrounded": 6}}}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = write_report(summaries, tmp_path).read_text()
    assert "| CSR | 0.84 |" in report and "| CSR_unrounded | 0.845000 |" in report
    assert "| 汽车 | 0.84 |" in report
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught][:3]
    assert (tmp_path / "charts" / "cf__CSR.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_eval_command(tmp_path):
    data = write_jsonl(tmp_path / "math.jsonl", [{"id": 1, "prompt": "1+1?", "answer": "2"}])
    responses = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "1+1?", "response": "\\boxed{2}"}])
    tree = {"models": [{"name": "given", "responses": str(responses)}],
            "suites": [{"type": "math", "data": str(data)}], "output_dir": str(tmp_path / "out"), "progress": False}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["eval", "--config", str(tmp_path / "eval.yaml")])
    assert result.exit_code == 0, result.output
    assert "given / math: accuracy 1.000 (1 samples, 0 failed)" in result.output
    tree["suites"][0]["type"] = "nope"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["eval", "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and "unknown suite type 'nope'" in result.output
    result = CliRunner().invoke(app, ["eval", "--help-config"])
    assert result.exit_code == 0 and "suites[].type" in result.output and "judge.max_reasks" in result.output


def test_replayed_judgments_are_written_but_nothing_is_asked(tmp_path):
    """Re-scoring the official CFBench judgment file (6 samples) writes 6 records and sends no request; before,
    ``resume.asked`` said 6."""
    responses = write_jsonl(tmp_path / "none.jsonl", [])
    cfg = config(tmp_path, {"models": [{"name": "given", "responses": str(responses)}],
                            "suites": [{"type": "cfbench", "options": {"judgments": str(DATA / "cfbench_eval.json")}}],
                            "output_dir": str(tmp_path / "out")})
    summary = run_eval(cfg)["given"]["cfbench"]
    assert summary["resume"] == {"reused": 0, "written": 6, "model_requests": 0, "judge_requests": 0,
                                 "dropped_truncated": 0}
    assert summary["metrics"]["CSR"] == 0.73


def test_local_model_directory(tmp_path, tiny_model_dir):
    """A `path` model generates in-process (the LLM layer's local backend); its replies are scored and cached."""
    data = write_jsonl(tmp_path / "math.jsonl", [{"id": i, "prompt": f"{i} + 1 = ?", "answer": str(i + 1)}
                                                 for i in range(3)])
    cfg = config(tmp_path, {"models": [{"name": "tiny", "path": str(tiny_model_dir), "max_tokens": 4}],
                            "suites": [{"type": "math", "data": str(data)}], "output_dir": str(tmp_path / "out"),
                            "progress": False})
    summary = run_eval(cfg)["tiny"]["math"]
    rows = records(tmp_path / "out" / "tiny" / "math.jsonl")
    assert [r["id"] for r in rows] == ["0", "1", "2"] and all(isinstance(r["response"], str) for r in rows)
    assert summary["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 3
    assert summary["resume"] == {"reused": 0, "written": 3, "model_requests": 3, "judge_requests": 0,
                                 "dropped_truncated": 0}
    assert (tmp_path / "out" / "llm-cache.sqlite").is_file()


# ------------------------------------------------------------------------------- a served model end to end


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """``novalign serve`` on a free loopback port; yields its base URL (``.../v1``)."""
    with served(tiny_model_dir, "--api-key", KEY, "--set", "engine.max_batch_size=64",
                "--set", "engine.batch_wait_ms=20", "--set", "engine.default_max_tokens=16") as url:
        yield url


def chat_requests(url: str) -> int:
    return health(url)["chat_completions"]


def endpoint(url: str, **extra) -> dict:
    return {"backend": "openai", "base_url": url, "model": "tiny", "api_key": KEY, "no_cache": True,
            "progress": False, "max_attempts": 2, **extra}


def test_resume_asks_only_what_is_missing(tmp_path, server, caplog):
    """A full run of 8 IFEval prompts asks the server 8 times; a run killed after 3 records and in the middle of
    the 4th asks exactly the other 5 (the cut line is dropped with a warning and counted); a rerun of a
    finished suite asks nothing."""
    data = tmp_path / "ifeval8.jsonl"
    data.write_text("".join(IFEVAL_SAMPLE.read_text().splitlines(keepends=True)[:8]))
    tree = {"models": [{"name": "tiny", "llm": endpoint(server), "max_tokens": 16}],
            "suites": [{"type": "ifeval", "data": str(data)}], "progress": False}
    full = config(tmp_path, {**tree, "output_dir": str(tmp_path / "full")})
    before = chat_requests(server)
    run_eval(full)
    assert chat_requests(server) - before == 8
    finished = (tmp_path / "full" / "tiny" / "ifeval.jsonl").read_bytes().splitlines(keepends=True)
    assert len(finished) == 8

    killed = tmp_path / "killed" / "tiny"
    killed.mkdir(parents=True)
    (killed / "ifeval.jsonl").write_bytes(b"".join(finished[:3]) + finished[3][: len(finished[3]) // 2])
    before = chat_requests(server)
    with caplog.at_level(logging.WARNING, logger="novalign.eval"):
        summary = run_eval(config(tmp_path, {**tree, "output_dir": str(tmp_path / "killed")}))["tiny"]["ifeval"]
    assert chat_requests(server) - before == 5
    assert "ifeval.jsonl:4: dropped a truncated last record" in caplog.text
    assert summary["resume"] == {"reused": 3, "written": 5, "model_requests": 5, "judge_requests": 0,
                                 "dropped_truncated": 1}
    rows = records(killed / "ifeval.jsonl")
    assert [r["id"] for r in rows[:3]] == [json.loads(line)["id"] for line in finished[:3]]
    assert sorted(r["id"] for r in rows) == sorted(json.loads(line)["id"] for line in finished)
    assert summary["num_samples"] == 8

    before = chat_requests(server)
    again = run_eval(full)["tiny"]["ifeval"]
    assert chat_requests(server) - before == 0 and again["resume"] == {"reused": 8, "written": 0, "model_requests": 0,
                                                                  "judge_requests": 0, "dropped_truncated": 0}


def test_end_to_end_served_model_judged_by_itself(tmp_path, server):
    """The issue's end-to-end check: the served tiny model answers the bundled IFEval-format and CFBench-format
    files and judges the CFBench answers itself; summary, per-sample records (with every raw judge reply),
    report.md and its charts are produced. The untrained judge cannot write the strict checklist JSON, so its
    judgments are recorded as failed and counted -- never guessed."""
    has_cfbench = importlib.util.find_spec("novalign.eval.checklist") is not None and hasattr(
        importlib.import_module("novalign.eval.checklist"), "run_cfbench")
    suites = [{"type": "ifeval", "data": str(IFEVAL_SAMPLE)}]
    if has_cfbench:
        suites.append({"type": "cfbench", "data": str(CFBENCH_SAMPLE)})
    tree = {"models": [{"name": "tiny", "llm": endpoint(server), "max_tokens": 16}],
            "judge": {**endpoint(server), "max_tokens": 16, "max_reasks": 1}, "suites": suites,
            "output_dir": str(tmp_path / "out"), "progress": False}
    summaries = run_eval(config(tmp_path, tree))
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summaries))
    report = (out / "report.md").read_text()
    assert "## ifeval" in report and "](charts/ifeval__strict.png)" in report
    assert (out / "charts" / "ifeval__strict.png").read_bytes()[:4] == b"\x89PNG"
    assert summaries["tiny"]["ifeval"]["num_samples"] == 22
    if not has_cfbench:
        pytest.skip("novalign.eval.checklist.run_cfbench does not exist yet: the CFBench half of the end-to-end "
                    "test (ifeval half passed above) did not run")
    cf = summaries["tiny"]["cfbench"]
    rows = records(out / "tiny" / "cfbench.jsonl")
    assert len(rows) == cf["num_samples"] == 6
    assert cf["num_failed"] == sum(r["failed"] for r in rows) > 0
    for row in rows:
        assert row["judge_raw"] and all(isinstance(raw, str) for raw in row["judge_raw"])
        if row["failed"]:
            assert len(row["judge_raw"]) == 2  # the first ask and max_reasks = 1 re-ask, all kept
            assert row["judge_score"] is None and row["CSR"] == row["PSR"] == 0.0  # scored 0, nothing guessed
    judge_calls = sum(len(r["judge_raw"]) for r in rows)  # every ask and re-ask left one raw reply
    assert cf["resume"] == {"reused": 0, "written": 6, "model_requests": 6, "judge_requests": judge_calls,
                            "dropped_truncated": 0}
    assert "## cfbench" in report and list((out / "charts").glob("cfbench__*.png"))

