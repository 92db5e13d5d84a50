"""SysBench's published judgments: the ``output/<model>/<model>_analysis.xlsx`` workbooks, read and re-scored.

These workbooks are the only per-sample judgments SysBench publishes (``PKU-Baichuan-MLSystemLab/SysBench``,
own-history runs in ``output/<model>/`` and ground-truth-history runs in ``output/with_gt_history_output/``).
``utils.py`` ``analysis_eval_results`` writes them; ``plot/tab*.py`` read them back for the paper's tables.

Sheet ``详情`` has one row per turn (2,500 rows: 500 sessions x 5 turns, sorted by ``system_id``) with the
columns ``system_id, 领域, 场景, multi_rounds_related, alignment, round_index, ..., 评判结果, 是否可用``;
``评判结果`` holds one line per criterion, ``"<id>. <constraint type> | <verdict>"``. The judge's verdict is
normally 是 or 否 but the published files also hold 不适用, 无法判断, 部分, ... (a few per model).

Two turn rules are in the official code, and they differ exactly on those other verdicts:

- ``是否可用`` = 1 unless some verdict is 否 (``utils.py``). The paper's ISR and SSR tables
  (``plot/tab3_align.py``, ``tab4_turn.py``, ``tab7_align_full.py``) read this column, so a 不适用 turn counts
  as satisfied there. :func:`novalign.eval.benchmarks.sysbench_metrics` uses this rule (``violated`` = 否).
- ``round_flag`` = every verdict is 是 (``utils.py``), used only for the workbook's own sheets 不同轮次遵循
  and 最大连续遵循轮次; :func:`workbook_sheets` recomputes those with it.

CSR counts 是 only (``categorys_valid``), in both the sheet 不同约束类型遵循 and ``plot/tab6_csr_full.py``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from novalign.data.io import DataError

__all__ = ["SHEET_DETAILS", "parse_verdicts", "read_sysbench_workbook", "read_workbook_sheets", "workbook_sheets"]

SHEET_DETAILS = "详情"
SHEET_TYPES = "不同约束类型遵循"
SHEET_ROUNDS = "不同轮次遵循"
SHEET_STREAK = "最大连续遵循轮次"
_COLUMNS = ("system_id", "领域", "multi_rounds_related", "alignment", "round_index", "评判结果", "是否可用")
_VERDICT_LINE = re.compile(r"^\s*(\d+)\.\s*(.*?)\s*\|\s*(.*?)\s*$")
_CHINESE_TYPES = {"动作约束": "Action", "内容约束": "Content", "背景约束": "Background", "角色约束": "Role",
                  "格式约束": "Format", "风格约束": "Style"}


def _workbook(path: Path):
    from openpyxl import load_workbook  # only this reader needs it

    if not path.is_file():
        raise FileNotFoundError(f"SysBench workbook not found: {path}")
    try:
        return load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile / KeyError / InvalidFileException for non-workbooks
        raise DataError(path, None, None, f"not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from exc


def _sheet(path: Path, book, name: str):
    if name not in book.sheetnames:
        raise DataError(path, None, name, f"no sheet {name!r}; the workbook has {book.sheetnames}")
    return book[name]


def parse_verdicts(path: str | Path, row: int, text: Any) -> list[dict]:
    """The criteria of one ``评判结果`` cell: ``[{id, type, verdict, satisfied, violated}]``.

    ``satisfied`` is verdict == 是 (what CSR counts), ``violated`` verdict == 否 (what fails a turn).
    Example: ``"1. 动作约束 | 是\\n2. 格式约束 | 不适用"`` -> Action satisfied; Format neither satisfied nor
    violated. A line not shaped ``<id>. <type> | <verdict>`` is a :class:`DataError` naming the row.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, row, "评判结果", f"expected '<id>. <type> | <verdict>' lines, got {text!r}")
    criteria = []
    for line in text.split("\n"):
        match = _VERDICT_LINE.match(line)
        if match is None:
            raise DataError(path, row, "评判结果", f"expected '<id>. <type> | <verdict>', got {line[:60]!r}")
        key, kind, verdict = match.groups()
        criteria.append({"id": key, "type": _CHINESE_TYPES.get(kind, kind), "verdict": verdict,
                         "satisfied": verdict == "是", "violated": verdict == "否"})
    return criteria


def _rows(path: Path, sheet) -> Iterator[tuple[int, dict]]:
    """``(row number, {column: value})`` for each data row of ``详情``; row numbers as Excel shows them."""
    rows = sheet.iter_rows(values_only=True)
    header = next(rows, None)
    if header is None:
        raise DataError(path, 1, SHEET_DETAILS, "empty sheet; expected a header row")
    index = {name: i for i, name in enumerate(header)}
    missing = [c for c in _COLUMNS if c not in index]
    if missing:
        raise DataError(path, 1, SHEET_DETAILS, f"header lacks the columns {missing}; got {list(header)}")
    for number, values in enumerate(rows, start=2):
        if all(v is None for v in values):
            continue
        yield number, {c: values[index[c]] if index[c] < len(values) else None for c in index}


def _flag(path: Path, row: int, name: str, value: Any) -> bool:
    # pandas writes booleans as Excel booleans; a file saved elsewhere may hold TRUE/FALSE text or 0/1.
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().upper() in ("TRUE", "FALSE"):
        return value.strip().upper() == "TRUE"
    raise DataError(path, row, name, f"expected TRUE/FALSE, got {value!r}")


def read_sysbench_workbook(path: str | Path) -> list[dict]:
    """Sessions of a SysBench ``*_analysis.xlsx`` (sheet ``详情``) as records ``sysbench_metrics`` scores.

    Each session: ``{id, category, multi_rounds_related, failed: False, turns: [{alignment, round_index,
    usable, criteria}]}``, turns in ``round_index`` order; ``usable`` is the published ``是否可用``. Rows
    must come as the official writer puts them: a session's rows together, ``round_index`` 1, 2, ... The
    published ``是否可用`` must agree with the verdicts (no 否), or the row is reported.

    Raises:
        DataError: naming the file, the row and the column at fault.
    """
    path = Path(path)
    book = _workbook(path)
    try:
        sessions: list[dict] = []
        seen: set[str] = set()
        for row, rec in _rows(path, _sheet(path, book, SHEET_DETAILS)):
            turn = _turn(path, row, rec)
            key = str(rec["system_id"])
            if sessions and sessions[-1]["id"] == key:
                session = sessions[-1]
            else:
                if key in seen:
                    raise DataError(path, row, "system_id", f"session {key} resumes after other sessions' rows")
                seen.add(key)
                session = {"id": key, "category": str(rec["领域"]), "failed": False,
                           "multi_rounds_related": _flag(path, row, "multi_rounds_related", rec["multi_rounds_related"]),
                           "turns": []}
                sessions.append(session)
            expected = len(session["turns"]) + 1
            if turn["round_index"] != expected:
                raise DataError(path, row, "round_index", f"expected {expected} for session {key}, got "
                                f"{turn['round_index']!r}")
            session["turns"].append(turn)
    finally:
        book.close()
    if not sessions:
        raise DataError(path, None, SHEET_DETAILS, "no data rows")
    return sessions


def _turn(path: Path, row: int, rec: dict) -> dict:
    criteria = parse_verdicts(path, row, rec["评判结果"])
    usable = rec["是否可用"]
    if usable not in (0, 1) or isinstance(usable, bool):
        raise DataError(path, row, "是否可用", f"expected 0 or 1, got {usable!r}")
    if bool(usable) == any(c["violated"] for c in criteria):
        raise DataError(path, row, "是否可用", f"published {usable} disagrees with the verdicts (1 = no 否)")
    alignment = rec["alignment"]
    if alignment not in ("align", "misalign", "unknown"):
        raise DataError(path, row, "alignment", f"expected align/misalign/unknown, got {alignment!r}")
    try:
        round_index = int(rec["round_index"])
    except (TypeError, ValueError):
        raise DataError(path, row, "round_index", f"expected a turn number, got {rec['round_index']!r}") from None
    return {"alignment": alignment, "round_index": round_index, "usable": int(usable), "criteria": criteria}


# ---------------------------------------------------------------------- the workbook's own summary sheets


def read_workbook_sheets(path: str | Path) -> dict[str, list[list[Any]]]:
    """The summary sheets of a workbook as published: ``{sheet name: rows}`` (every sheet but ``详情``)."""
    path = Path(path)
    book = _workbook(path)
    try:
        return {name: [list(r) for r in book[name].iter_rows(values_only=True)]
                for name in book.sheetnames if name != SHEET_DETAILS}
    finally:
        book.close()


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 2)


def workbook_sheets(sessions: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """The numbers of the sheets ``utils.py`` writes beside ``详情``, recomputed from the sessions.

    - 不同约束类型遵循: per constraint type (English names here) and ``total``: ``count``
      (约束总量), ``satisfied`` (遵循数量, verdict 是) and ``rate`` (遵循率, percent, 2 dp).
    - 不同轮次遵循: per turn 1..5 and ``total``: turns whose verdicts are all 是 (``round_flag``) and the rate
      over sessions (``total`` over sessions x 5), percent, 2 dp.
    - 最大连续遵循轮次: for ``dependent`` / ``parallel`` / ``all`` sessions, per turn i the number of sessions
      whose turns 1..i are all-是, and that count over the group's sessions, percent, 2 dp; plus the later
      script's ``total`` column (see :func:`_streak`).

    Worked example: one parallel session, turns all-是, all-是, [是, 不适用], 是, 否 -> rounds counts
    [1, 1, 0, 1, 0], total 3, rates [100, 100, 0, 100, 0], total 3/5 = 60.0; streak counts [1, 1, 0, 0, 0],
    count total (1 + 2) / 5 = 0.6, mean streak 2 / 1 = 2.0.
    """
    counts: dict[str, int] = defaultdict(int)
    met: dict[str, int] = defaultdict(int)
    turns = max(len(s["turns"]) for s in sessions)
    rounds = [0] * turns
    streak = {g: [0] * turns for g in ("dependent", "parallel", "all")}
    sizes = {"dependent": 0, "parallel": 0, "all": len(sessions)}
    for s in sessions:
        group = "dependent" if s["multi_rounds_related"] else "parallel"
        sizes[group] += 1
        unbroken = True
        for i, turn in enumerate(s["turns"]):
            for c in turn["criteria"]:
                counts[c["type"]] += 1
                met[c["type"]] += c["satisfied"]
            if all(c["satisfied"] for c in turn["criteria"]):
                rounds[i] += 1
                if unbroken:
                    streak[group][i] += 1
                    streak["all"][i] += 1
            else:
                unbroken = False
    types = {t: {"count": counts[t], "satisfied": met[t], "rate": _pct(met[t], counts[t])} for t in sorted(counts)}
    total_count, total_met = sum(counts.values()), sum(met.values())
    types["total"] = {"count": total_count, "satisfied": total_met, "rate": _pct(total_met, total_count)}
    return {
        SHEET_TYPES: types,
        SHEET_ROUNDS: {"count": rounds + [sum(rounds)], "rate": [_pct(r, len(sessions)) for r in rounds]
                       + [_pct(sum(rounds), len(sessions) * turns)]},
        SHEET_STREAK: {g: _streak(streak[g], sizes[g]) for g in streak},
    }


def _streak(counts: list[int], size: int) -> dict[str, Any]:
    """One group of 最大连续遵循轮次. The later ``utils.py`` adds a ``total`` column: for the counts row
    ``sum(i * count_i) / turns`` (2 dp), for the rates row the mean unbroken streak in turns,
    ``sum(count_i) / sessions`` (2 dp; several published workbooks hold it unrounded)."""
    if not size:
        return {"count": counts, "rate": [None] * len(counts), "count_total": None, "mean_streak": None,
                "mean_streak_exact": None}
    exact = sum(counts) / size
    return {"count": counts, "rate": [_pct(c, size) for c in counts],
            "count_total": round(sum((i + 1) * c for i, c in enumerate(counts)) / len(counts), 2),
            "mean_streak": round(exact, 2), "mean_streak_exact": exact}
