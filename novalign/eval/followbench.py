"""FollowBench (Jiang et al. 2024, arXiv:2310.20410): multi-level fine-grained constraints, scored as its ``code/``.

Data (``data/<type>_constraints.json``, a JSON array; types ``content``, ``situation``, ``style``, ``format``,
``example``, ``mixed``): ``{example_id, category, source, level, instruction, target}``. Each example has one
row per level, level 0 the bare instruction and level k the instruction with k constraints added one at a
time; levels 1-5 are asked. Model replies (``api_output/<model>/<type>_constraint.jsonl``) are
``{prompt, choices: [{message: {content}}]}``, matched to the data by instruction text; the judge's replies
(``gpt4_discriminative_eval_output/<model>/<type>_constraint.jsonl``) are ``{prompt_new, choices}`` matched
by the judge prompt.

Scoring (``gpt4_based_evaluation.py``): samples of :data:`~novalign.eval.followbench_rules.RULE_SOURCES`,
format examples 22 and 30 and the ``example`` category are checked by rule
(:mod:`novalign.eval.followbench_rules`); the others are shown to the judge with every intermediate
instruction and asked for a Python list of ``YES`` / ``NO``, one per added constraint, on the reply's last
line (level 1: ``YES`` or ``NO`` on the last line). A sample is hard-satisfied when every element is ``YES``
and soft-satisfied to the fraction of ``YES``; a rule-checked sample is both or neither.

- HSR / SSR at level k (per type): the level-k sum over judged and rule-checked samples divided by
  ``n_group = judged // 5 + rule-checked // 5``, x100, printed ``{:.2f}`` (the ``<type>_hsr.csv`` tables);
- CSL (per type): the mean number of consecutive levels satisfied from level 1, rounded to 1 decimal;
- ``hsr`` / ``ssr`` overall: ``aggregator.py``'s score, the level-weighted mean ``sum_k k * rate_k / 15``
  of each type's table, averaged over the types with a ``*_hsr.csv`` table (all but ``example``).

A reply whose judgment cannot be parsed after re-asks is counted in ``num_failed`` and as not satisfied
(the official script adds ``-1`` and asks for a manual fix; ``options.failed_value: -1`` does the same); it
also ends the CSL run.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval import suite_kit as kit
from novalign.eval.followbench_rules import is_rule_checked, rule_satisfied
from novalign.eval.judge import JudgeParseError, Judgment
from novalign.eval.official import iter_json_items
from novalign.eval.suite_api import SuiteContext

__all__ = ["CONSTRAINT_TYPES", "followbench_judge_prompt", "followbench_scores", "parse_followbench_judgment",
           "read_followbench", "read_followbench_outputs", "run_followbench"]

CONSTRAINT_TYPES = ("content", "situation", "style", "format", "example", "mixed")
LEVELS = (1, 2, 3, 4, 5)
# how the judge prompt names the added constraints, per type (the official prompt functions)
_ADDED = {"content": "content constraint", "style": "style constraint", "format": "format constraint",
          "situation": "situation constraint (information to describe a specific situation/background)",
          "mixed": "constraint"}
_NOT_YES = ("NO", "PARTIAL", "MAYBE", "UNKNOWN", "N/A")


# ------------------------------------------------------------------------------------------------ readers


def read_followbench(path: str | Path, constraint_type: str | None = None) -> list[dict[str, Any]]:
    """The rows of one ``<type>_constraints.json``, checked, each with its ``type`` (from the file name unless
    given) and its ``chain``: the instructions of its example from level 0 up to its own (what the judge is
    shown), grouped as the official loop does (consecutive rows with the same ``example_id``).

    Raises:
        DataError: naming the file, line and field (a missing instruction, a level outside 0-5).
    """
    kind_of = constraint_type or Path(path).name.removesuffix("_constraints.json")
    if kind_of not in CONSTRAINT_TYPES:
        raise ValueError(f"{path}: cannot tell the constraint type (name the file <type>_constraints.json, "
                         f"type one of {CONSTRAINT_TYPES})")
    rows: list[dict[str, Any]] = []
    chain: list[str] = []
    for line, rec in iter_json_items(path):
        for name, kind in (("example_id", int), ("category", str), ("source", str), ("level", int),
                           ("instruction", str)):
            if not isinstance(rec.get(name), kind) or isinstance(rec.get(name), bool):
                raise DataError(path, line, name, f"missing or not {kind.__name__} (got {rec.get(name)!r:.60})")
        if not 0 <= rec["level"] <= 5:
            raise DataError(path, line, "level", f"expected 0-5, got {rec['level']}")
        if kind_of == "example" and not isinstance(rec.get("target"), str):
            raise DataError(path, line, "target", "an example-constraint row needs its answer template")
        if rows and rows[-1]["example_id"] == rec["example_id"]:
            chain = [*chain, rec["instruction"]]
        else:
            chain = [rec["instruction"]]
        rows.append({"id": f"{kind_of}/{rec['example_id']}/{rec['level']}", "example_id": rec["example_id"],
                     "type": kind_of, "category": rec["category"], "source": rec["source"], "level": rec["level"],
                     "instruction": rec["instruction"], "target": rec.get("target") or "", "chain": chain,
                     "line": line})
    return rows


def read_followbench_outputs(path: str | Path, key: str) -> dict[str, str]:
    """An official output file (``{<key>, choices: [{message: {content}}]}`` per line) -> {key text: content};
    ``key`` is ``prompt`` (model replies) or ``prompt_new`` (judge replies). The first line of a text wins."""
    out: dict[str, str] = {}
    for line, rec in iter_json_items(path):
        if not isinstance(rec.get(key), str):
            raise DataError(path, line, key, "missing or not a string")
        try:
            content = rec["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise DataError(path, line, "choices[0].message.content", "missing") from None
        if not isinstance(content, str):
            raise DataError(path, line, "choices[0].message.content", "not a string")
        out.setdefault(rec[key], content)
    return out


# --------------------------------------------------------------------------------------- judge and parse


def followbench_judge_prompt(constraint_type: str, chain: Sequence[str], answer: str) -> str:
    """The official discriminative prompt for a level ``len(chain) - 1`` reply (``<type>_evaluation_prompt``).

    The wording (typo included) is FollowBench's own, from its ``code/gpt4_based_evaluation.py`` (Apache-2.0,
    Jiang et al.), kept word for word on purpose: a judge must be asked exactly what the benchmark asks for
    its scores to be comparable, and published judge replies are matched to samples by this text."""
    level = len(chain) - 1
    added = _ADDED[constraint_type]
    if level == 1:
        return (f"Given an initial instruction, we add one {added} and obtain the final instruction with 1 "
                f"additional constraint.\n\n#Initial Instruction#\n{chain[0]}\n\n#Initial Instruction + 1 constraint#\n"
                f"{chain[1]}\n\n#Answer of Initial Instruction + 1 constraint#\n{answer}\n\n#System#\n1) Please "
                "identify the 1 added constraint.\n2) Please descriminate if the #Answer of Initial Instruction + 1 "
                "constraint# satisfies the 1 added constraint.\n3) In the final line, only output a Python LIST "
                "with 1 element ('YES' or 'NO') indicating whether the answer satisfies the 1 added constraint.")
    text = (f"Given an initial instruction, we add one {added} per time and obtain the final instruction with "
            f"{level} additional constraints.\n\n#Initial Instruction#\n{chain[0]}\n\n"
            f"#Initial Instruction + 1 constraint#\n{chain[1]}\n\n")
    for i in range(2, level + 1):
        text += f"#Initial Instruction + {i} constraints#\n{chain[i]}\n\n"
    return text + (f"#Answer of Initial Instruction + {level} constraints#\n{answer}\n\n#System#\n1) Please identify "
                   f"all {level} added constraints.\n2) For the {level} added constraints, discriminate if the "
                   f"#Answer of Initial Instruction + {level} constraints# satisfies each constraint.\n3) In the "
                   f"final line, only output a Python LIST with {level} elements ('YES' or 'NO') indicating whether "
                   "the answer satisfies each constraint.")


def parse_followbench_judgment(text: str, level: int) -> tuple[int, float]:
    """``paring_discriminative_generation``: ``(hard, soft)`` from the judge reply's last line.

    Level 1: ``YES`` anywhere on it -> (1, 1), else ``NO`` -> (0, 0). Level k > 1: the ``[...]`` on it, read
    as a Python list of k elements, ``YES`` counting 1 and ``NO`` / ``PARTIAL`` / ``MAYBE`` / ``UNKNOWN`` /
    ``N/A`` 0: ``['YES', 'NO', 'YES']`` -> (0, 2/3).

    Raises:
        JudgeParseError: no verdict, no list, a list of the wrong length or with another element.
    """
    last = text.strip("`").strip().split("\n")[-1]
    if level == 1:
        if "YES" in last:
            return 1, 1.0
        if "NO" in last:
            return 0, 0.0
        raise JudgeParseError("the last line must say YES or NO")
    found = re.search(r"\[.*\]", last)
    if not found:
        raise JudgeParseError(f"the last line must be a Python list of {level} 'YES' / 'NO'")
    try:
        verdicts = ast.literal_eval(found.group())
    except (ValueError, SyntaxError):
        raise JudgeParseError(f"the last line's list cannot be read: {found.group()[:80]}") from None
    if not isinstance(verdicts, (list, tuple)) or len(verdicts) != level:
        raise JudgeParseError(f"expected a list of {level} elements, got {found.group()[:80]}")
    bad = [v for v in verdicts if v != "YES" and v not in _NOT_YES]
    if bad:
        raise JudgeParseError(f"list elements must be 'YES' or 'NO', got {bad[:3]}")
    yes = sum(v == "YES" for v in verdicts)
    return int(yes == level), yes / level


# --------------------------------------------------------------------------------------------- scoring


def _rates(records: Sequence[dict], field: str, failed_value: float = 0) -> tuple[dict[int, float], int]:
    """Per level, the official sum / n_group x100 (unrounded), and n_group; a failed judgment adds
    ``failed_value`` (0 here; the official script's unfixed -1 with ``failed_value=-1``)."""
    judged = [r for r in records if not r["rule"]]
    ruled = [r for r in records if r["rule"]]
    n_group = len(judged) // 5 + len(ruled) // 5
    sums = defaultdict(float)
    for r in records:
        sums[r["level"]] += failed_value if r[field] is None else r[field]
    return ({k: 100 * sums[k] / n_group for k in LEVELS} if n_group else {}), n_group


def _csl(records: Sequence[dict]) -> float | None:
    """Mean count of consecutive hard-satisfied levels from level 1, over examples with all five levels."""
    by_example: dict[Any, dict[int, Any]] = defaultdict(dict)
    for r in records:
        by_example[r["example_id"]][r["level"]] = r["hard"]
    runs = []
    for levels in by_example.values():
        if all(k in levels for k in LEVELS):
            run = 0
            while run < 5 and levels[LEVELS[run]] == 1:
                run += 1
            runs.append(run)
    return sum(runs) / len(runs) if runs else None


def followbench_scores(records: Sequence[dict], *, failed_value: float = 0) -> dict[str, Any]:
    """Per constraint type: ``hsr_level<k>`` / ``ssr_level<k>`` (rounded to 2 dp as the tables print them;
    ``*_unrounded`` beside) and ``csl`` (1 dp); overall: ``hsr`` / ``ssr`` (the aggregator's weighted score of
    the rounded tables, over the types other than ``example``), ``hsr_level<k>`` / ``ssr_level<k>`` (means over
    all types) and ``csl`` (mean over types).

    Example (one judged content example): levels 1-5 hard 1, 1, 0, 1, 0 and soft 1, 1, 2/3, 3/4, 3/5 ->
    n_group 1, HSR 100, 100, 0, 100, 0; SSR 100, 100, 66.67, 75, 60; CSL 2; weighted HSR (1 + 2 + 4) / 15 x100
    = 46.67. ``failed_value``: what a failed judgment adds (0; -1 reproduces the official script's tables
    before their manual fix)."""
    types: dict[str, dict[str, float]] = {}
    for category in sorted({r["category"] for r in records}):
        group = [r for r in records if r["category"] == category]
        row: dict[str, float] = {}
        for field, name in (("hard", "hsr"), ("soft", "ssr")):
            rates, _ = _rates(group, field, failed_value)
            for k, v in rates.items():
                row[f"{name}_level{k}"] = round(v, 2)
                row[f"{name}_level{k}_unrounded"] = v
        csl = _csl(group)
        if csl is not None:
            row["csl"], row["csl_unrounded"] = round(csl, 1), csl
        types[category] = row
    overall: dict[str, float] = {}
    tabled = [t for c, t in types.items() if c != "example" and "hsr_level1" in t]
    for name in ("hsr", "ssr"):
        if tabled:
            overall[name] = sum(sum(k * t[f"{name}_level{k}"] for k in LEVELS) / 15 for t in tabled) / len(tabled)
        for k in LEVELS:
            values = [t[f"{name}_level{k}"] for t in types.values() if f"{name}_level{k}" in t]
            if values:
                overall[f"{name}_level{k}"] = sum(values) / len(values)
    csls = [t["csl"] for t in types.values() if "csl" in t]
    if csls:
        overall["csl"] = sum(csls) / len(csls)
    return {"metrics": overall, "by_category": types}


# ------------------------------------------------------------------------------------------------- the suite


def _data_files(ctx: SuiteContext) -> list[Path]:
    kit.require(ctx, "data")
    root = Path(ctx.data)
    wanted = list(ctx.options.get("constraint_types", CONSTRAINT_TYPES))
    unknown = [t for t in wanted if t not in CONSTRAINT_TYPES]
    if unknown:
        raise ValueError(f"suite {ctx.name!r}: unknown constraint types {unknown}; known: {CONSTRAINT_TYPES}")
    if root.is_file():
        return [root]
    files = [root / f"{t}_constraints.json" for t in wanted if (root / f"{t}_constraints.json").is_file()]
    if not files:
        raise ValueError(f"suite {ctx.name!r}: no <type>_constraints.json in {root}")
    return files


def _outputs(folder: Any, category: str, key: str) -> dict[str, str] | None:
    if not folder:
        return None
    path = Path(folder) / f"{category}_constraint.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"FollowBench outputs: no {path.name} in {folder}")
    return read_followbench_outputs(path, key)


def _replies(ctx: SuiteContext, samples: list[dict]) -> None:
    """Put the model's reply on each sample (``generation``): asked, or read from ``options.responses``."""
    if ctx.respond is not None:
        replies = ctx.respond([[{"role": "user", "content": s["instruction"]}] for s in samples])
        for s, reply in zip(samples, replies, strict=True):
            s["generation"] = reply
        return
    if not ctx.options.get("responses"):
        raise ValueError(f"suite {ctx.name!r}: no model to ask and no options.responses folder")
    cache: dict[str, dict[str, str]] = {}
    for s in samples:
        if s["type"] not in cache:
            cache[s["type"]] = _outputs(ctx.options["responses"], s["type"], "prompt") or {}
        given = cache[s["type"]]
        if s["instruction"] not in given:
            raise ValueError(f"suite {ctx.name!r}: no reply in {s['type']}_constraint.jsonl for {s['id']}")
        s["generation"] = given[s["instruction"]]


def _record(s: dict, hard: int | None, soft: float | None, error: str | None = None) -> dict:
    return {"id": s["id"], "category": s["type"], "constraints": s["category"], "example_id": s["example_id"],
            "level": s["level"],
            "source": s["source"], "response": s["generation"], "rule": is_rule_checked(s), "hard": hard,
            "soft": soft, "failed": error is not None, "error": error}


def _judge(ctx: SuiteContext, samples: list[dict]) -> list[dict]:
    """Judged samples: from the official judge output files (``options.judgments``) or by asking the judge."""
    for s in samples:
        s["prompt_new"] = followbench_judge_prompt(s["type"], s["chain"], s["generation"])
    if ctx.options.get("judgments"):
        out, cache = [], {}
        for s in samples:
            if s["type"] not in cache:
                cache[s["type"]] = _outputs(ctx.options["judgments"], s["type"], "prompt_new")
            given = cache[s["type"]]
            if s["prompt_new"] not in given:
                raise ValueError(f"suite {ctx.name!r}: no judgment of {s['id']} in {s['type']}_constraint.jsonl")
            try:
                hard, soft = parse_followbench_judgment(given[s["prompt_new"]], s["level"])
                record = _record(s, hard, soft)
            except JudgeParseError as exc:
                record = _record(s, None, None, str(exc))
            record["judge_raw"] = [given[s["prompt_new"]]]
            ctx.write(record)
            out.append(record)
        return out

    def finish(s: dict, js: list[Judgment]) -> dict:
        return _record(s, None, None, js[0].error) if js[0].failed else _record(s, *js[0].parsed)

    return kit.judge_all(ctx, samples, lambda s: [(s["prompt_new"],
                                                    lambda text, k=s["level"]: parse_followbench_judgment(text, k))],
                         finish)


def run_followbench(ctx: SuiteContext) -> dict[str, Any]:
    """FollowBench: ``data`` is the ``data/`` folder (or one ``<type>_constraints.json``); options
    ``constraint_types`` (default all six), ``responses`` (an ``api_output/<model>`` folder: score only),
    ``judgments`` (a ``gpt4_discriminative_eval_output/<model>`` folder: re-score the judge's replies),
    ``judge_attempts``, ``chunk_size``, ``failed_value`` (0; -1 as the official unfixed tables). Metrics: see
    :func:`followbench_scores`."""
    samples = [s for f in _data_files(ctx) for s in read_followbench(f) if s["level"] > 0]
    fresh: dict[str, dict] = {}
    for chunk in kit.chunks(kit.pending(ctx, samples), kit.chunk_size(ctx)):
        _replies(ctx, chunk)
        judged = []
        for s in chunk:
            if is_rule_checked(s):
                ok = int(rule_satisfied(s, s["generation"]))
                fresh[s["id"]] = _record(s, ok, float(ok))
                ctx.write(fresh[s["id"]])
            else:
                judged.append(s)
        if judged:
            fresh |= {r["id"]: r for r in _judge(ctx, judged)}
    records = kit.all_records(ctx, list(fresh.values()), [s["id"] for s in samples])
    scores = followbench_scores(records, failed_value=float(ctx.options.get("failed_value", 0)))
    return kit.summary(records, scores["metrics"], scores["by_category"],
                       decimals={k: 2 for k in scores["metrics"] if k != "csl"} | {"csl": 1})
