"""Readers for the official CFBench, SysBench and FB-Bench files, as their repositories publish them.

Each reader checks every record and raises :class:`~novalign.data.io.DataError` naming the file, the line
where the record starts and the field at fault. JSON-array files (how all three publish their data) and
JSON-lines files (FB-Bench's answers and judgments) are both read, record by record, with line numbers.

Field names, and where they were checked:

- CFBench (``PKU-Baichuan-MLSystemLab/CFBench``): ``data/cfbench_data.json`` -- ``idx``, ``prompt``, ``gold``,
  ``split`` (easy/hard), ``doamin`` (sic), ``scenario``, ``criteria`` = ``[[text, 主需|次需, type, subtype]]``;
  ``output/response/*_infer.json`` adds ``response``; ``output/judge/*_eval.json`` adds ``judge_response``,
  ``judge_score`` (``"0"``/``"1"`` strings), ``judge_parsing`` (``"1"`` parsed, ``"0"`` salvaged, ``"-1"``
  failed) and ``judge_metric`` (``code/evalaute.py``).
- SysBench (``PKU-Baichuan-MLSystemLab/SysBench``): the data file itself is not in the repository; its fields
  are those ``eval_system_bench.py`` and ``utils.py`` read: ``system_id``, ``system_prompt``, ``messages``
  (system, then user/assistant turns with the ground-truth replies), ``prompt_infos`` =
  ``{user message: {"alignment": "align"|"misalign", "criteria": {"1": {"criteria_id", "criteria_content",
  "criteria_type"}}}}``, ``rounds_related``, ``领域``, ``场景``. Judgment files (``*_eval.json``) add
  ``eval_results`` = ``{user message: {"评判理由", "评判结果": {"1": "是"|"否"}, "response", "criteria"}}``
  (``null`` for a session whose judging failed). Constraint types are the Chinese names of ``plot/tab6_csr_full.py``.
- FB-Bench (``PKU-Baichuan-MLSystemLab/FB-Bench``): ``data/feedback-benchmark/fb_bench_dataset.json`` --
  ``bench_type``, ``task_type``, ``sub_task_type``, ``user_query``, ``origin_first_response``, ``feedback``,
  ``feedback_type``, ``error_type``, ``reference_second_response`` (error correction only), ``checklist`` =
  ``[[text, weight]]`` (error correction) or ``[text]`` (response maintenance); ``model_answer/*.jsonl`` adds
  ``second_response``, ``infer_model``; ``model_judgment/<judge>/*.jsonl`` adds ``judge_model``,
  ``judgement`` = ``{checkpoint: {"评判理由", "评判结果": "是"|"否", "weight"}}`` and ``score``
  (``gen_judgment.py``). FB-Bench records have no id; the official code keys them by ``user_query``, so the
  id here is a hash of it.
- MT-Bench (``lm-sys/FastChat`` ``fastchat/llm_judge``, checked in the ``aapot/FastChat`` fork's ``common.py``):
  single-answer judgments ``model_judgment/gpt-4_single.jsonl`` -- ``question_id``, ``model``, ``judge``,
  ``user_prompt``, ``judgment``, ``score`` (``-1`` when the judge's rating could not be parsed), ``turn``;
  model answers ``model_answer/<model>.jsonl`` -- ``question_id``, ``model_id``, ``choices[0].turns``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from novalign.data.io import DataError
from novalign.eval.benchmarks import (
    CFBENCH_PRIMARY,
    CFBENCH_SECONDARY,
    FBBENCH_BENCH_TYPES,
    cfbench_sample_scores,
)

__all__ = [
    "SYSBENCH_TYPES",
    "cfbench_judged_record",
    "fbbench_judged_record",
    "iter_json_items",
    "read_answers",
    "read_cfbench",
    "read_fbbench",
    "read_mtbench_judgments",
    "read_prompts",
    "read_responses",
    "read_sysbench",
    "read_sysbench_judgments",
]

# SysBench's constraint types (criteria_type) and the English names of its tables (plot/tab6_csr_full.py).
SYSBENCH_TYPES = {"动作约束": "Action", "内容约束": "Content", "背景约束": "Background", "角色约束": "Role",
                  "格式约束": "Format", "风格约束": "Style"}


def iter_json_items(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line, record)`` for each object of a JSON-array file or a JSON-lines file; line = where it starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = _text(path)
    start = len(text) - len(text.lstrip())
    decoder = json.JSONDecoder()
    if text[start:start + 1] != "[":
        for line, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                yield line, _object(path, line, raw, decoder)
        return
    pos, line, seen = start + 1, 1 + text.count("\n", 0, start), start
    while True:
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return
        line += text.count("\n", seen, pos)
        seen = pos
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(path, 1 + text.count("\n", 0, exc.pos), None, f"malformed JSON: {exc.msg}") from exc
        if not isinstance(value, dict):
            raise DataError(path, line, None, f"expected a JSON object in the array, got {type(value).__name__}")
        yield line, value
        pos = _skip(text, end)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            raise DataError(path, 1 + text.count("\n", 0, pos), None, "expected ',' or ']' after an array item")


def _text(path: Path) -> str:
    """The file as UTF-8 text, or a DataError that says where it is not (and what it looks like instead)."""
    raw = path.read_bytes()
    if raw.startswith(b"PK\x03\x04"):
        raise DataError(path, None, None, "a zip archive (an .xlsx workbook?), not JSON; SysBench's *_analysis.xlsx "
                        "workbooks are read by novalign.eval.sysbench_workbook (give the .xlsx as options.judgments)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = 1 + raw.count(b"\n", 0, exc.start)
        raise DataError(path, line, None, f"not UTF-8 text: byte {raw[exc.start]:#04x} at offset {exc.start}; "
                        "expected a UTF-8 JSON array or JSON-lines file") from None


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _object(path: Path, line: int, raw: str, decoder: json.JSONDecoder) -> dict:
    try:
        value = decoder.decode(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, line, None, f"malformed JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(value, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(value).__name__}")
    return value


def _need(path: Path, line: int, record: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in record:
        raise DataError(path, line, name, "missing")
    value = record[name]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(path, line, name, f"expected {names}, got {type(value).__name__}: {str(value)[:60]!r}")
    return value


# ---------------------------------------------------------------------------------------------- CFBench


def read_cfbench(path: str | Path) -> list[dict]:
    """CFBench samples (data, infer or eval file): ``{id, prompt, reference, split, category, criteria,
    response?, judge_score?, judge_parsing?, judge_response?}`` with ``criteria`` as published."""
    path = Path(path)
    samples = []
    for line, rec in iter_json_items(path):
        _need(path, line, rec, "idx", (int, str))
        _need(path, line, rec, "prompt", str)
        criteria = _need(path, line, rec, "criteria", list)
        if not criteria:
            raise DataError(path, line, "criteria", "empty; every sample needs at least one criterion")
        for i, crit in enumerate(criteria):
            if not isinstance(crit, list) or len(crit) < 2 or not isinstance(crit[0], str):
                raise DataError(path, line, f"criteria[{i}]", f"expected [text, priority, type, ...], got {crit!r}")
            if crit[1] not in (CFBENCH_PRIMARY, CFBENCH_SECONDARY):
                raise DataError(path, line, f"criteria[{i}][1]", f"priority must be 主需 or 次需, got {crit[1]!r}")
        sample = {"id": str(rec["idx"]), "prompt": rec["prompt"], "reference": rec.get("gold") or "",
                  "split": rec.get("split", ""), "category": rec.get("doamin", rec.get("domain", "all")),
                  "criteria": criteria}
        for name in ("response", "judge_score", "judge_parsing", "judge_response"):
            if name in rec:
                sample[name] = rec[name]
        if "judge_score" in rec and str(rec.get("judge_parsing")) not in ("1", "0", "-1"):
            raise DataError(path, line, "judge_parsing", f"expected \"1\", \"0\" or \"-1\", got {rec.get('judge_parsing')!r}")
        samples.append(sample)
    return samples


def cfbench_judged_record(sample: dict) -> dict:
    """A judged sample from an official eval file as a record ``cfbench_metrics`` scores the official way.

    ``judge_parsing`` "1": the scores as given. "0" (the official salvage of a malformed answer): scored
    as if every criterion were secondary, which is exactly the official branch (ISR = CSR == 1, PSR = CSR > 0.8).
    "-1": a failed judgment, scoring 0 (``judge_score=None``) and counted as failed.
    """
    parsing = str(sample["judge_parsing"])
    scores = [float(s) for s in sample["judge_score"]]
    criteria = sample["criteria"]
    if parsing == "0":
        criteria = [[f"salvaged {i}", CFBENCH_SECONDARY] for i in range(len(scores))]
    record = {"id": sample["id"], "category": sample["category"], "split": sample["split"],
              "criteria": criteria, "judge_score": None if parsing == "-1" else scores,
              "failed": parsing == "-1", "judge_raw": [sample.get("judge_response", "")]}
    return record | cfbench_sample_scores(record["judge_score"], [c[1] for c in criteria])


# --------------------------------------------------------------------------------------------- SysBench


def read_sysbench(path: str | Path) -> list[dict]:
    """SysBench sessions: ``{id, category, system, multi_rounds_related, turns: [{user, gold, alignment,
    criteria: [{id, content, type}]}]}``; the gold replies are the data's assistant messages."""
    path = Path(path)
    sessions = []
    for line, rec in iter_json_items(path):
        _need(path, line, rec, "system_id", (int, str))
        messages = _need(path, line, rec, "messages", list)
        infos = _need(path, line, rec, "prompt_infos", dict)
        system = rec.get("system_prompt")
        turns: list[dict] = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
                raise DataError(path, line, f"messages[{i}]", f"expected a system/user/assistant message, got {msg!r}")
            if msg["role"] == "system":
                system = msg["content"]
            elif msg["role"] == "user":
                turns.append({"user": msg["content"], "gold": None, **_turn_info(path, line, infos, msg["content"], i)})
            elif turns and turns[-1]["gold"] is None:
                turns[-1]["gold"] = msg["content"]
        if not turns:
            raise DataError(path, line, "messages", "no user turns")
        if system is None:
            raise DataError(path, line, "system_prompt", "missing (and no system message in messages)")
        sessions.append({"id": str(rec["system_id"]), "category": rec.get("领域", "all"), "system": system,
                         "multi_rounds_related": bool(rec.get("rounds_related", False)), "turns": turns})
    return sessions


def _turn_info(path: Path, line: int, infos: dict, user: str, index: int) -> dict:
    info = infos.get(user)
    if not isinstance(info, dict):
        raise DataError(path, line, f"prompt_infos[messages[{index}].content]", "missing for this user message")
    criteria = info.get("criteria")
    if not isinstance(criteria, dict) or not criteria:
        raise DataError(path, line, f"prompt_infos[messages[{index}]].criteria", "expected a non-empty object")
    parsed = []
    for key in sorted(criteria, key=lambda k: int(k)):
        crit = criteria[key]
        for name in ("criteria_content", "criteria_type"):
            if not isinstance(crit, dict) or not isinstance(crit.get(name), str):
                raise DataError(path, line, f"prompt_infos[messages[{index}]].criteria[{key}].{name}", "missing or not a string")
        parsed.append({"id": str(key), "content": crit["criteria_content"],
                       "type": SYSBENCH_TYPES.get(crit["criteria_type"], crit["criteria_type"])})
    return {"alignment": info.get("alignment", "unknown"), "criteria": parsed}


def read_sysbench_judgments(path: str | Path) -> list[dict]:
    """Sessions of an official ``*_eval.json`` as records ``sysbench_metrics`` takes. A session whose
    ``eval_results`` is null failed: its criteria count as unsatisfied and it is marked ``failed``."""
    path = Path(path)
    records = []
    sessions = read_sysbench(path)
    for (line, rec), session in zip(iter_json_items(path), sessions):
        results = rec.get("eval_results", "missing")
        if results == "missing":
            raise DataError(path, line, "eval_results", "missing; is this a judgment (*_eval.json) file?")
        turns = []
        for turn in session["turns"]:
            verdicts = None if results is None else results.get(turn["user"])
            if results is not None and not isinstance(verdicts, dict):
                raise DataError(path, line, "eval_results", f"no judgment for the user message {turn['user'][:40]!r}")
            marks = {} if verdicts is None else verdicts.get("评判结果", {})
            turns.append({"alignment": turn["alignment"], "response": (verdicts or {}).get("response"),
                          "criteria": [_verdict(c["type"], marks.get(c["id"])) for c in turn["criteria"]]})
        records.append({"id": session["id"], "category": session["category"], "failed": results is None,
                        "multi_rounds_related": session["multi_rounds_related"], "turns": turns,
                        "judge_raw": [json.dumps(results, ensure_ascii=False)]})
    return records


def _verdict(kind: str, verdict: Any) -> dict:
    """One judged criterion: 是 satisfies it, 否 violates it, another answer (不适用, ...) does neither, as in
    the official ``utils.py``; a missing verdict (a failed judgment) violates it."""
    return {"type": kind, "verdict": verdict, "satisfied": verdict == "是", "violated": verdict is None or verdict == "否"}


# --------------------------------------------------------------------------------------------- FB-Bench


def read_fbbench(path: str | Path) -> list[dict]:
    """FB-Bench samples (dataset, model answers or judgments): the published fields plus ``id``,
    ``category`` (= ``task_type``) and ``checklist`` normalised to ``[[text, weight or None]]``."""
    path = Path(path)
    samples, seen = [], {}
    for line, rec in iter_json_items(path):
        for name in ("bench_type", "task_type", "user_query", "origin_first_response", "feedback"):
            _need(path, line, rec, name, str)
        if rec["bench_type"] not in FBBENCH_BENCH_TYPES:
            raise DataError(path, line, "bench_type", f"expected one of {FBBENCH_BENCH_TYPES}, got {rec['bench_type']!r}")
        checklist = _need(path, line, rec, "checklist", list)
        if not checklist:
            raise DataError(path, line, "checklist", "empty")
        items = []
        for i, item in enumerate(checklist):
            text, weight = (item, None) if isinstance(item, str) else (item + [None])[:2] if isinstance(item, list) else (None, None)
            if not isinstance(text, str) or not (weight is None or (isinstance(weight, (int, float)) and 0 < weight <= 1)):
                raise DataError(path, line, f"checklist[{i}]", f"expected text or [text, weight in (0, 1]], got {item!r}")
            items.append([text, weight])
        digest = hashlib.sha1(rec["user_query"].encode("utf-8")).hexdigest()[:12]
        seen[digest] = seen.get(digest, 0) + 1
        sample_id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
        samples.append({**rec, "id": sample_id, "category": rec["task_type"], "checklist": items, "_line": line})
    return samples


def fbbench_judged_record(path: str | Path, sample: dict) -> dict:
    """A judged sample of an official ``model_judgment`` file as a record ``fbbench_metrics`` scores.

    The score is recomputed from ``judgement`` with the official ``get_score`` rule; a judgement without
    checkpoints (the official ``{'API fialed': ...}`` marker) scores 0, as there, and is marked failed.
    """
    from novalign.eval.benchmarks import fbbench_checklist_score

    judgement = sample.get("judgement")
    if not isinstance(judgement, dict):
        raise DataError(path, sample["_line"], "judgement", "missing or not an object; is this a judgment file?")
    items = [v for v in judgement.values() if isinstance(v, dict)]
    passed = [(str(v.get("评判结果", v.get("judgement result"))).strip() in ("是", "yes"), v.get("weight")) for v in items]
    return {"id": sample["id"], "category": sample["task_type"], "bench_type": sample["bench_type"],
            "task_type": sample["task_type"], "failed": not items, "judgement": judgement,
            "score": fbbench_checklist_score(passed) if items else 0.0, "second_response": sample.get("second_response"),
            "judge_raw": [json.dumps(judgement, ensure_ascii=False)]}


# --------------------------------------------------------------------------------------------- MT-Bench


def read_mtbench_judgments(path: str | Path, model: str) -> dict[str, dict[int, float | None]]:
    """``{question_id: {turn: score}}`` for ``model`` from a FastChat single-answer judgment file; a score of
    -1 (the judge's rating could not be parsed) becomes ``None``, a failed judgment."""
    path = Path(path)
    found: dict[str, dict[int, float | None]] = {}
    for line, rec in iter_json_items(path):
        for name in ("question_id", "model", "score"):
            _need(path, line, rec, name, (int, float, str) if name != "score" else (int, float))
        if rec["model"] != model:
            continue
        turn = int(rec.get("turn", 1))
        found.setdefault(str(rec["question_id"]), {})[turn] = None if rec["score"] == -1 else float(rec["score"])
    return found


# ---------------------------------------------------------------------------------- prompts and answers


def read_prompts(path: str | Path) -> list[dict]:
    """Prompt records ``{id, category, turns, reference}`` from JSON lines / a JSON array with ``id`` (or
    MT-Bench's ``question_id``), ``prompt`` (or ``turns``: the user messages, MT-Bench ``question.jsonl``),
    optional ``category`` (the capability) and ``reference`` (a string or one per turn)."""
    samples = []
    for line, rec in iter_json_items(path):
        key = rec.get("id", rec.get("question_id"))
        if not isinstance(key, (str, int)):
            raise DataError(path, line, "id", "missing (need id or question_id)")
        turns = rec.get("turns", [rec["prompt"]] if isinstance(rec.get("prompt"), str) else None)
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(path, line, "prompt", "need a prompt string or a non-empty turns list of strings")
        reference = rec.get("reference") or ""
        references = reference if isinstance(reference, list) else [reference] * len(turns)
        samples.append({"id": str(key), "category": str(rec.get("category", "all")), "turns": turns,
                        "references": [str(r) for r in references] + [""] * (len(turns) - len(references))})
    return samples


def read_answers(path: str | Path) -> dict[str, Any]:
    """``{id: reply or [reply per turn]}`` from ``{id | question_id, response | responses}`` records or a
    FastChat ``model_answer`` file (``choices[0].turns``)."""
    found = {}
    for line, rec in iter_json_items(path):
        key, reply = rec.get("id", rec.get("question_id")), rec.get("response", rec.get("responses"))
        if reply is None and isinstance(rec.get("choices"), list) and rec["choices"]:
            reply = rec["choices"][0].get("turns")
        if key is None or reply is None:
            raise DataError(path, line, "id" if key is None else "response", "missing")
        found[str(key)] = reply
    return found


# ------------------------------------------------------------------------------------------- responses


def read_responses(path: str | Path, *, key: str = "id", field: str = "response") -> dict[str, Any]:
    """``{id: response}`` from a JSON-array or JSON-lines file of ``{key: ..., field: ...}`` records."""
    path = Path(path)
    found: dict[str, Any] = {}
    for line, rec in iter_json_items(path):
        _need(path, line, rec, key, (int, str))
        if field not in rec:
            raise DataError(path, line, field, "missing")
        if str(rec[key]) in found:
            raise DataError(path, line, key, f"duplicate id {rec[key]!r}")
        found[str(rec[key])] = rec[field]
    return found
