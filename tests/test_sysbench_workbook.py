"""SysBench's published ``*_analysis.xlsx`` workbooks: read, re-scored with the official turn rule, and the
workbook's own summary sheets recomputed. The workbooks here are written by the test in the published shape
(sheet 详情 with the columns ``utils.py`` writes; one line ``"<id>. <type> | <verdict>"`` per criterion).

The two sessions (worked by hand in each test)::

    session 1, parallel:   turn 1 align    [动作 是, 格式 不适用]   是否可用 1
                           turn 2 misalign [内容 否]                是否可用 0
    session 2, dependent:  turn 1 align    [风格 是]                是否可用 1
                           turn 2 align    [内容 是, 内容 是]        是否可用 1
"""

from __future__ import annotations

import pytest

from novalign.data.io import DataError
from novalign.eval import benchmarks as bm
from novalign.eval import checklist
from novalign.eval.official import iter_json_items
from novalign.eval.suite_api import SuiteContext
from novalign.eval.sysbench_workbook import read_sysbench_workbook, workbook_sheets

openpyxl = pytest.importorskip("openpyxl")

HEADER = ["system_id", "领域", "场景", "multi_rounds_related", "alignment", "round_index", "system_prompt", "prompt",
          "referrence", "answer", "infer_model", "评判细则", "评判理由", "评判结果", "是否可用"]
ROWS = [  # system_id, related, alignment, round, verdicts, usable
    (1, False, "align", 1, "1. 动作约束 | 是\n2. 格式约束 | 不适用", 1),
    (1, False, "misalign", 2, "1. 内容约束 | 否", 0),
    (2, True, "align", 1, "1. 风格约束 | 是", 1),
    (2, True, "align", 2, "1. 内容约束 | 是\n2. 内容约束 | 是", 1),
]


def write_workbook(path, rows=ROWS):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "详情"
    sheet.append(HEADER)
    for sid, related, alignment, turn, verdicts, usable in rows:
        sheet.append([sid, "旅游", "咨询", related, alignment, turn, "sys", f"q{turn}", "ref", "ans", "m", "crit",
                      "why", verdicts, usable])
    book.create_sheet("不同约束类型遵循")
    book.save(path)
    return path


@pytest.fixture
def workbook(tmp_path):
    return write_workbook(tmp_path / "m_analysis.xlsx")


def test_official_turn_rule_no_verdict_is_no(workbook):
    """CSR counts 是 only: 4 of 6 (Action 1/1, Content 2/3, Format 0/1, Style 1/1).
    A turn fails only on a 否 (是否可用), so session 1 turn 1 [是, 不适用] passes: ISR 3/4, aligned 3/3,
    misaligned 0/1. SSR: session 1 holds 1 of 2 turns, session 2 both -> (1/2 + 2/2) / 2 = 0.75; R1 = 1,
    R2 = 0.5. "Every verdict is 是" would give ISR 2/4 and SSR 0.5."""
    sessions = read_sysbench_workbook(workbook)
    assert [s["id"] for s in sessions] == ["1", "2"] and sessions[1]["multi_rounds_related"] is True
    m = bm.sysbench_metrics(sessions)
    assert m["CSR"] == pytest.approx(4 / 6)
    assert m["CSR_per_type"] == pytest.approx({"Action": 1.0, "Content": 2 / 3, "Format": 0.0, "Style": 1.0})
    assert m["ISR"] == 0.75 and m["ISR_per_alignment"] == {"aligned": 1.0, "misaligned": 0.0}
    assert m["SSR"] == 0.75 and m["SSR_per_turn"] == [1.0, 0.5]
    assert m["SSR_per_mode"]["parallel"]["SSR"] == 0.5 and m["SSR_per_mode"]["dependent"]["SSR"] == 1.0
    assert m["ISR_per_mode"]["parallel"] == {"ISR": 0.5, "aligned": 1.0, "misaligned": 0.0}


def test_summary_sheets_use_the_every_verdict_is_yes_rule(workbook):
    """The workbook's sheets (utils.py round_flag): a turn counts only if every verdict is 是.
    不同轮次遵循: turn 1 only session 2 ([是, 不适用] does not count) -> 1; turn 2 session 2 -> 1; total 2;
    rates over 2 sessions [50.0, 50.0], total 2 / (2 x 2) = 50.0.
    最大连续遵循轮次: dependent (session 2) [1, 1] = 100 %; parallel (session 1) [0, 0]; all [1, 1] = 50 %;
    total columns: counts (1 x 1 + 2 x 1) / 2 turns = 1.5; mean streak dependent 2 / 1 = 2.0, all 2 / 2 = 1.0.
    不同约束类型遵循: Content 3 / 2 / 66.67 %, total 6 / 4 / 66.67 %."""
    sheets = workbook_sheets(read_sysbench_workbook(workbook))
    assert sheets["不同轮次遵循"] == {"count": [1, 1, 2], "rate": [50.0, 50.0, 50.0]}
    streak = sheets["最大连续遵循轮次"]
    assert streak["dependent"] == {"count": [1, 1], "rate": [100.0, 100.0], "count_total": 1.5, "mean_streak": 2.0,
                                   "mean_streak_exact": 2.0}
    assert streak["parallel"]["count"] == [0, 0] and streak["parallel"]["rate"] == [0.0, 0.0]
    assert streak["all"]["count"] == [1, 1] and streak["all"]["rate"] == [50.0, 50.0]
    assert streak["all"]["mean_streak"] == 1.0 and streak["all"]["count_total"] == 1.5
    types = sheets["不同约束类型遵循"]
    assert types["Content"] == {"count": 3, "satisfied": 2, "rate": 66.67}
    assert types["total"] == {"count": 6, "satisfied": 4, "rate": 66.67}


def test_suite_rescores_a_workbook(workbook):
    written: list[dict] = []
    ctx = SuiteContext(name="sys", data=None, respond=None, judge=None, write=written.append, done={},
                       options={"judgments": str(workbook)}, peers={}, model_name="m", progress=False)
    summary = checklist.run_sysbench(ctx)
    assert summary["metrics"]["ISR"] == 0.75 and summary["metrics"]["SSR"] == 0.75 and len(written) == 2
    assert summary["sysbench_sheets"]["不同轮次遵循"]["count"] == [1, 1, 2]


@pytest.mark.parametrize(("row", "item", "value", "message"), [  # item: the index in a ROWS tuple
    (1, 4, "1. 动作约束 是", r"m_analysis.xlsx:3: field '评判结果': expected '<id>. <type> \| <verdict>'"),
    (1, 5, 1, r"m_analysis.xlsx:3: field '是否可用': published 1 disagrees"),
    (3, 3, 3, r"m_analysis.xlsx:5: field 'round_index': expected 2 for session 2"),
    (0, 2, "aligned", r"m_analysis.xlsx:2: field 'alignment'"),
])
def test_bad_rows_name_file_row_and_column(tmp_path, row, item, value, message):
    """Sheet rows count as Excel shows them: the header is row 1, ROWS[i] is row i + 2."""
    rows = [list(r) for r in ROWS]
    rows[row][item] = value
    path = write_workbook(tmp_path / "m_analysis.xlsx", [tuple(r) for r in rows])
    with pytest.raises(DataError, match=message):
        read_sysbench_workbook(path)


def test_json_readers_name_the_file_for_a_workbook_or_undecodable_bytes(tmp_path, workbook):
    """Before, both failed with a bare UnicodeDecodeError naming no file."""
    with pytest.raises(DataError, match=r"m_analysis.xlsx: a zip archive \(an .xlsx workbook\?\)"):
        list(iter_json_items(workbook))
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[\n  {"a": 1},\n  {"a": "caf\xe9"}\n]\n')
    with pytest.raises(DataError, match=r"latin.json:3: not UTF-8 text: byte 0xe9"):
        list(iter_json_items(latin))
    not_a_book = tmp_path / "x.xlsx"
    not_a_book.write_text("plain text", encoding="utf-8")
    with pytest.raises(DataError, match=r"x.xlsx: not a readable .xlsx workbook"):
        read_sysbench_workbook(not_a_book)
