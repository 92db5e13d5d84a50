"""Fidelity check of the section 5.2 suites against the official repositories, each given as a checkout.

Usage::

    python bench/official_suites.py alpacaeval <alpaca_eval checkout> [--instruction-difficulty CSV --gamed CSV]
    python bench/official_suites.py alpacaeval-lc <alpaca_eval checkout> --official-path DIR [--models 3]
    python bench/official_suites.py followbench <FollowBench checkout>
    python bench/official_suites.py mixeval <MixEval checkout>
    python bench/official_suites.py math <hendrycks/math checkout> [--pairs 200000]

- ``alpacaeval``: for every ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json`` in the
  checkout, :mod:`novalign.eval.alpacaeval` against the published leaderboard
  (``src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv``):
  win rate, standard error, wins / losses / draws, discrete win rate, average length; the LC win rate too
  when the two files of the ``tatsu-lab/alpaca_eval`` dataset it needs are given.
- ``alpacaeval-lc``: the LC fit against the official ``glm_winrate.py`` (an installed ``alpaca_eval``) with
  stand-ins for the two dataset files (:func:`check_alpacaeval_lc`).
- ``followbench``: deterministic synthetic model replies and judge replies in the official layouts, scored by
  the official ``code/eval.py`` (run in a temporary copy of the checkout) and by
  :func:`novalign.eval.followbench.run_followbench` (``failed_value=-1``, as the unfixed official tables);
  every HSR / SSR / CSL cell and ``aggregator.py``'s two scores compared.
- ``mixeval``: the published ``gemma_11_7b_instruct`` answer files parsed by rule with the official
  ``mix_eval/utils/metric_utils.py`` functions and with :mod:`novalign.eval.mixeval`; every score compared.
- ``math``: ``modeling/math_equivalence.py``'s ``is_equiv`` and ``dataset/util.py``'s
  ``last_boxed_only_string`` + ``remove_boxed`` against :func:`novalign.eval.math.hendrycks_equivalent` and
  :func:`novalign.eval.answers.hendrycks_boxed` on random strings made of LaTeX answer fragments.

None of those repositories' code or data is in novalign: point this at checkouts. The official code runs
from the checkout (FollowBench's needs matplotlib; MixEval's two API-judge modules and ``tiktoken`` are
replaced by empty stand-ins, as only its rule functions run). Prints one JSON line per check.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from novalign.eval import alpacaeval as ae  # noqa: E402
from novalign.eval.suite_api import SuiteContext  # noqa: E402

LEADERBOARD = "src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
COLUMNS = ("win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total", "discrete_win_rate",
           "avg_length")


def check_alpacaeval(root: Path, difficulty: str | None, gamed: str | None) -> dict:
    board = {r[""]: r for r in csv.DictReader((root / LEADERBOARD).open(encoding="utf-8"))}
    diff = ae.read_instruction_difficulty(difficulty) if difficulty else None
    gamed_rows = ae.read_gamed_rows(gamed) if gamed else None
    rows, worst = [], {}
    for path in sorted(root.glob("results/*/weighted_alpaca_eval_gpt4_turbo/annotations.json")):
        model = path.parent.parent.name
        if model not in board:
            continue
        ann = ae.read_alpaca_annotations(path)
        mine = ae.win_rate_stats([a["preference"] for a in ann])
        outputs = path.parent.parent / "model_outputs.json"
        lengths = [len(o) for o in ae.read_model_outputs(outputs)] if outputs.is_file() else [len(a["output_2"]) for a in ann]
        mine["avg_length"] = int(sum(lengths) / len(lengths))
        cols = list(COLUMNS)
        if diff is not None and gamed_rows is not None:
            mine |= ae.length_controlled_win_rate(ann, diff, gamed_rows)
            cols += ["length_controlled_winrate", "lc_standard_error"]
        diffs = {c: abs(float(board[model][c]) - float(mine[c])) for c in cols if board[model].get(c, "") != ""}
        for c, d in diffs.items():
            worst[c] = max(worst.get(c, 0.0), d)
        rows.append({"model": model, "win_rate": mine["win_rate"], "published": float(board[model]["win_rate"]),
                     "lc_published": board[model].get("length_controlled_winrate"),
                     "mismatches": [c for c, d in diffs.items() if d > 1e-9]})
    return {"check": "alpacaeval", "models": len(rows), "columns": len(COLUMNS) + 2 * (diff is not None),
            "mismatches": {r["model"]: r["mismatches"] for r in rows if r["mismatches"]}, "max_abs_diff": worst,
            "lc_checked": diff is not None and gamed_rows is not None, "sample": rows[:3]}


def check_alpacaeval_lc(root: Path, official_path: str, models: int) -> dict:
    """The LC fit against the official ``glm_winrate.py`` (importable from ``official_path``, e.g. a
    ``pip install --target DIR alpaca_eval patsy python-dotenv fire termcolor``) on the checkout's annotations,
    with stand-ins for the dataset's two files: difficulties drawn N(0, 1) (seed 0) and, as the gamed rows, the
    GLM rows of ``gpt-3.5-turbo-1106_verbose`` / ``_concise``. Checks the fit, not the published numbers."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, official_path)
    import alpaca_eval.metrics.glm_winrate as official

    results = root / "results"
    with tempfile.TemporaryDirectory() as tmp:
        difficulty = {i: float(d) for i, d in enumerate(np.random.default_rng(0).normal(0, 1, 805))}
        pd.DataFrame({"instruction_difficulty": list(difficulty.values())},
                     index=pd.Index(range(805), name="index")).to_csv(Path(tmp) / "instruction_difficulty.csv")
        gamed = []
        for name in ("gpt-3.5-turbo-1106_verbose", "gpt-3.5-turbo-1106_concise"):
            ann = ae.read_alpaca_annotations(results / name / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json")
            gamed += [{**r, "not_gamed": 0.0} for r in ae.glm_rows(ann, difficulty, not_gamed=False)]
        pd.DataFrame([{"model": "gamed", "index": r["index"], "preference": r["preference"],
                       "std_delta_len": r["std_delta_len"], "instruction_difficulty": r["instruction_difficulty"],
                       "not_gamed_baseline": False} for r in gamed]).to_csv(Path(tmp) / "df_gamed.csv", index=False)
        official.hf_hub_download = lambda repo_id, filename, **kw: str(Path(tmp) / filename)
        out, worst = [], 0.0
        paths = sorted(results.glob("*/weighted_alpaca_eval_gpt4_turbo/annotations.json"))[:models]
        for path in paths:
            ann = ae.read_alpaca_annotations(path)
            frame = pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
            for glm in ae.GLM_FORMULAS:
                with contextlib.redirect_stderr(io.StringIO()):
                    theirs = official.get_length_controlled_winrate(frame.copy(), glm_name=glm, save_weights_dir=None,
                                                                    is_warn_extreme_changes=False)
                mine = ae.length_controlled_win_rate(ann, difficulty, gamed, glm=glm)
                diff = abs(theirs["length_controlled_winrate"] - mine["length_controlled_winrate"])
                worst = max(worst, diff)
                out.append({"model": path.parent.parent.name, "glm": glm, "official": theirs["length_controlled_winrate"],
                            "ours": mine["length_controlled_winrate"]})
    return {"check": "alpacaeval_lc_fit", "fits": len(out), "max_abs_diff": worst, "sample": out[:3]}


# ------------------------------------------------------------------------------------------ FollowBench

_CANDIDATES = ("We study activations in one sentence", "the bus is in town now and we go in",
               "Potter is here. The actor smiled. The films have grown.", "(A)", "The answer is $18", "01/02/2003",
               "Harry is running fast stuff.", "1. First\n\n2. Second\n\n3. Third")
_TYPES = ("content", "situation", "style", "format", "example", "mixed")


def _followbench_inputs(work: Path, model: str) -> None:
    """Synthetic replies (api_output) and judge replies (one per official judge prompt) in the official layouts."""
    rng = random.Random(7)
    (work / "api_output_vllm" / model).mkdir(parents=True)
    for t in _TYPES:
        data = json.loads((work / "data" / f"{t}_constraints.json").read_text(encoding="utf-8"))
        with (work / "api_output_vllm" / model / f"{t}_constraint.jsonl").open("w") as fh:
            for d in data:
                if d["level"] == 0:
                    continue
                r = rng.random()
                if t == "example":
                    template = d["target"].replace("{instruction}\n", "").replace("{{", "{").replace("}}", "}")
                    gen = template.replace("{answer}", "x" * rng.randint(1, 4)) if r < 0.6 else "nope"
                elif d.get("target") and r < 0.4:
                    gen = d["target"]
                else:
                    gen = rng.choice(_CANDIDATES) + " extra words" * rng.randint(0, 3)
                fh.write(json.dumps({"prompt": d["instruction"], "choices": [{"message": {"content": gen}}]}) + "\n")
    code = ("import sys; sys.path.insert(0, 'code'); import matplotlib; matplotlib.use('Agg')\n"
            "from gpt4_based_evaluation import acquire_discriminative_eval_input as a\n"
            f"for t in {list(_TYPES[:4]) + ['mixed']}: a('data', 'api_output_vllm', t, {model!r}, 'dj_in', 'j_in')\n")
    subprocess.run([sys.executable, "-c", code], cwd=work, check=True, capture_output=True)
    (work / "j_out" / model).mkdir(parents=True)
    for t in (*_TYPES[:4], "mixed"):
        with (work / "j_out" / model / f"{t}_constraint.jsonl").open("w") as fh:
            for line in (work / "dj_in" / model / f"{t}_constraint.jsonl").open():
                d = json.loads(line)
                verdicts = [rng.choice(["YES", "YES", "NO", "PARTIAL"]) for _ in range(d["level"])]
                last = str(verdicts) if d["level"] > 1 else rng.choice([f"['{verdicts[0]}']", "YES", "NO", "unsure"])
                reply = ("```\n" if rng.random() < 0.2 else "") + "1) constraints\n2) checks\n" + last
                fh.write(json.dumps({"prompt_new": d["prompt_new"], "choices": [{"message": {"content": reply}}]}) + "\n")


def _aggregate(files: list[str]) -> float:
    rows = [next(csv.DictReader(open(f))) for f in files]
    return sum(sum(k * float(r[f"level {k}"]) for k in range(1, 6)) / 15 for r in rows) / len(rows)


def check_followbench(root: Path) -> dict:
    from novalign.eval.followbench import run_followbench

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "fb"
        shutil.copytree(root / "code", work / "code")
        shutil.copytree(root / "data", work / "data")
        _followbench_inputs(work, "toy")
        subprocess.run([sys.executable, "-c", "import matplotlib; matplotlib.use('Agg'); import runpy, sys; "
                        "sys.path.insert(0, 'code'); sys.argv = ['eval.py', '--model_paths', 'toy', "
                        "'--data_gpt4_discriminative_eval_input_path', 'dj_in', '--gpt4_discriminative_eval_output_path', "
                        "'j_out']; runpy.run_path('code/eval.py', run_name='__main__')"], cwd=work, check=True,
                       capture_output=True)
        ctx = SuiteContext(name="followbench", data=work / "data", respond=None, judge=None, write=lambda r: None,
                           options={"responses": str(work / "api_output_vllm" / "toy"),
                                    "judgments": str(work / "j_out" / "toy"), "failed_value": -1},
                           model_name="toy", progress=False)
        mine = run_followbench(ctx)
        out = work / "evaluation_result"
        bad, cells = [], 0
        for t in _TYPES:
            for kind in ("hsr", "ssr"):
                row = next(csv.DictReader(open(out / ("example_rule_based.csv" if t == "example" else f"{t}_{kind}.csv"))))
                for k in range(1, 6):
                    cells += 1
                    if float(row[f"level {k}"]) != mine["by_category"][t][f"{kind}_level{k}"]:
                        bad.append(f"{t} {kind} level {k}")
            cells += 1
            if float(next(csv.DictReader(open(out / f"{t}_csl.csv")))["CSL"]) != mine["by_category"][t]["csl"]:
                bad.append(f"{t} csl")
        official = {k: _aggregate(glob.glob(str(out / f"*{k}.csv"))) for k in ("hsr", "ssr")}
    return {"check": "followbench", "cells": cells, "mismatches": bad, "official_hsr": official["hsr"],
            "ours_hsr": mine["metrics"]["hsr"], "official_ssr": official["ssr"], "ours_ssr": mine["metrics"]["ssr"],
            "failed_judgments": mine["num_failed"]}


# ---------------------------------------------------------------------------------------------- MixEval


def _official_mixeval(root: Path):
    sys.path.insert(0, str(root))
    sys.modules.setdefault("tiktoken", types.ModuleType("tiktoken"))
    names = ("ChatGPTJudgeCloseendFreeform", "OSJudgeCloseendFreeform", "ClaudeJudgeCloseendFreeform",
             "GeminiJudgeCloseendFreeform", "ChatGPTJudgeCloseendMultichoice", "OSJudgeCloseendMultichoice",
             "ClaudeJudgeCloseendMultichoice", "GeminiJudgeCloseendMultichoice")
    for module in ("mix_eval.utils.judge_freeform_parser", "mix_eval.utils.judge_multichoice_parser"):
        stand_in = types.ModuleType(module)  # the API judges: not run here
        for name in names:
            setattr(stand_in, name, object)
        sys.modules[module] = stand_in
    import mix_eval.utils.metric_utils as official

    return official


def check_mixeval(root: Path) -> dict:
    from novalign.eval.mixeval import run_mixeval

    official = _official_mixeval(root)
    args = types.SimpleNamespace()
    results = []
    for ff in sorted(root.glob("mix_eval/data/model_responses/*/*/*/*_close_freeform*.jsonl")):
        mc = Path(str(ff).replace("close_freeform", "close_multichoice"))
        per: dict[str, dict[str, list[bool]]] = {"ff": {}, "mc": {}}
        for line in ff.open():
            d = json.loads(line)
            ok = official.eval_freeform_rule(d["target"], official.parse_freeform_response_rule(args, d["response"]))
            for key in ("overall", d["benchmark_name"]):
                per["ff"].setdefault(key, []).append(ok)
        random.seed(42)  # the official set_seed(); the free-form rules draw no random numbers
        for line in mc.open():
            d = json.loads(line)
            letters = [chr(ord("A") + i) for i in range(len(d["options"]))]
            with contextlib.redirect_stdout(io.StringIO()):
                choice = official.parse_multi_choice_response_rule(args, d["response"], letters, dict(zip(letters, d["options"])))
            for key in ("overall", d["benchmark_name"]):
                per["mc"].setdefault(key, []).append(official.eval_multi_choice(letters[d["target"][0]], choice))
        rounded = {s: {k: round(sum(v) / len(v), 3) for k, v in g.items()} for s, g in per.items()}
        n = {s: {k: len(v) for k, v in g.items()} for s, g in per.items()}
        combined = {k: (rounded["ff"].get(k, 0) * n["ff"].get(k, 0) + rounded["mc"].get(k, 0) * n["mc"].get(k, 0))
                    / (n["ff"].get(k, 0) + n["mc"].get(k, 0)) for k in set(per["ff"]) | set(per["mc"])}
        ctx = SuiteContext(name="mixeval", data=None, respond=None, judge=None, write=lambda r: None,
                           options={"files": [str(ff), str(mc)], "parser": "rule"}, model_name="m", progress=False)
        mine = run_mixeval(ctx)
        ours = {"overall": mine["metrics"]["score"], **{k: v["score"] for k, v in mine["by_category"].items()}}
        results.append({"file": ff.name, "official_overall": combined["overall"], "ours": ours["overall"], "keys": len(combined),
                        "mismatches": [k for k in combined if abs(combined[k] - ours.get(k, -1)) > 1e-12]})
    return {"check": "mixeval_rule_parser", "files": results}


# ------------------------------------------------------------------------------------------------ MATH

_PIECES = ("\\frac", "\\dfrac", "\\tfrac", "1", "2", "12", "72", "{", "}", "/", "3", "0.5", ".5", " ", "x", "=", "k",
           "\\sqrt", "\\left(", "\\right)", "(", ")", "\\text{ units}", "\\text{ cm}", "\\%", "\\$", "^\\circ",
           "^{\\circ}", "\\!", "\\\\", "\n", ",", "-", "a", "0.", "\\boxed{", "\\fbox{", "\\{", "\\}", "3.0", "1/2")


def check_math(root: Path, pairs: int) -> dict:
    from novalign.eval.answers import hendrycks_boxed
    from novalign.eval.math import hendrycks_equivalent

    sys.path.insert(0, str(root / "modeling"))
    from dataset.util import last_boxed_only_string
    from math_equivalence import is_equiv

    def remove_boxed(s):  # eval_math_gpt.py's, three lines
        return s[len("\\boxed{"):-1] if s and s.startswith("\\boxed{") and s.endswith("}") else None

    rng = random.Random(0)
    bad, same = [], 0
    for _ in range(pairs):
        a = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 6)))
        b = a.replace(rng.choice(_PIECES), rng.choice(_PIECES)) if rng.random() < 0.5 else \
            "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 6)))
        with contextlib.redirect_stdout(io.StringIO()):
            want = is_equiv(a, b)
        same += want
        if hendrycks_equivalent(a, b) != want:
            bad.append([a, b])
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 10)))
        if hendrycks_boxed(text) != remove_boxed(last_boxed_only_string(text)):
            bad.append([text])
    return {"check": "math_is_equiv", "pairs": pairs, "equivalent_pairs": same, "mismatches": len(bad),
            "first": bad[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("benchmark", choices=["alpacaeval", "alpacaeval-lc", "followbench", "mixeval", "math"])
    parser.add_argument("checkout", type=Path, help="the official repository's checkout")
    parser.add_argument("--instruction-difficulty", help="alpacaeval: instruction_difficulty.csv of the dataset")
    parser.add_argument("--gamed", help="alpacaeval: df_gamed.csv of the dataset")
    parser.add_argument("--pairs", type=int, default=200_000, help="math: random answer pairs")
    parser.add_argument("--official-path", help="alpacaeval-lc: a folder the alpaca_eval package imports from")
    parser.add_argument("--models", type=int, default=3, help="alpacaeval-lc: how many models to fit")
    args = parser.parse_args()
    if args.benchmark == "alpacaeval":
        result = check_alpacaeval(args.checkout, args.instruction_difficulty, args.gamed)
    elif args.benchmark == "alpacaeval-lc":
        if not args.official_path:
            parser.error("alpacaeval-lc needs --official-path")
        result = check_alpacaeval_lc(args.checkout, args.official_path, args.models)
    elif args.benchmark == "followbench":
        result = check_followbench(args.checkout)
    elif args.benchmark == "mixeval":
        result = check_mixeval(args.checkout)
    else:
        result = check_math(args.checkout, args.pairs)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
