"""AlpacaEval 2 from small annotation files written here in the official ``annotations.json`` layout."""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval.alpacaeval import (
    glm_rows,
    length_controlled_win_rate,
    predict_win_rate,
    read_alpaca_annotations,
    read_gamed_rows,
    read_instruction_difficulty,
    run_alpacaeval,
    win_rate_stats,
)
from novalign.eval.suite_api import SuiteContext


def annotations_file(path, rows, model="m", baseline="gpt4_1106_preview"):
    """rows: (baseline output, model output, preference)."""
    records = [{"instruction": f"q{i}", "output_1": o1, "generator_1": baseline, "dataset": "helpful_base",
                "output_2": o2, "generator_2": model, "annotator": "weighted_alpaca_eval_gpt4_turbo",
                "preference": p, "price_per_example": 0.01} for i, (o1, o2, p) in enumerate(rows)]
    path.write_text(json.dumps(records, indent=4), encoding="utf-8")
    return path


def test_win_rate_counts_and_discrete():
    """[2, 1, 1.5, 1.8, None, 0]: None is dropped, 0 (legacy) and 1.5 are draws worth 0.5; kept minus one:
    [1, 0, .5, .8, .5] -> win rate 100 * 2.8 / 5 = 56; wins (> .5) 2, baseline wins 1, draws 2, total 5.
    Discrete: 1.8 rounds to 2, so [1, 0, .5, 1, .5] -> 60. Standard error: std(ddof 1) of the kept values
    (mean .56; squares .1936 + .3136 + .0036 + .0576 + .0036 = .572, / 4 = .143) / sqrt 5 -> 100 * .16912 = 16.91."""
    stats = win_rate_stats([2, 1, 1.5, 1.8, None, 0])
    assert stats["win_rate"] == pytest.approx(56.0)
    assert (stats["n_wins"], stats["n_wins_base"], stats["n_draws"], stats["n_total"]) == (2, 1, 2, 5)
    assert stats["discrete_win_rate"] == pytest.approx(60.0)
    assert stats["standard_error"] == pytest.approx(100 * (0.143 ** 0.5) / 5 ** 0.5)


def test_reader_errors_name_file_line_field(tmp_path):
    path = annotations_file(tmp_path / "annotations.json", [("a", "b", 2.0), ("a", "b", "much")])
    with pytest.raises(DataError, match=r"annotations.json:\d+: field 'preference': not a number"):
        read_alpaca_annotations(path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"output_1": "a", "generator_1": "b", "generator_2": "m", "preference": 1}]))
    with pytest.raises(DataError, match=r"bad.json:1: field 'output_2': missing"):
        read_alpaca_annotations(bad)


def test_glm_rows_features():
    """Baseline lengths 4, 4, 4 and model lengths 2, 6, 4 -> deltas 2, -2, 0 with std (ddof 1) 2 -> std_delta_len
    1, -1, 0; preferences 1 -> 0, 2 -> 1, None -> NaN; difficulty looked up by position."""
    ann = [{"index": i, "output_1": "aaaa", "output_2": o, "preference": p} for i, (o, p) in
           enumerate([("bb", 1.0), ("bbbbbb", 2.0), ("bbbb", None)])]
    rows = glm_rows(ann, {0: 0.5, 1: -0.5, 2: 0.0})
    assert [r["std_delta_len"] for r in rows] == [1.0, -1.0, 0.0]
    assert rows[0]["preference"] == 0.0 and rows[1]["preference"] == 1.0 and rows[2]["preference"] != rows[2]["preference"]
    assert [r["instruction_difficulty"] for r in rows] == [0.5, -0.5, 0.0]


def test_length_controlled_removes_a_pure_length_advantage(tmp_path):
    """The model wins exactly when it is longer (30 of 40 rows) and loses when shorter: raw win rate 75. Length
    explains every verdict, so the GLM puts the effect on the length term and the length-controlled rate,
    predicted at equal length, falls towards 50 (62.0: the L1 penalty and the CV choice of C leave some of it on the bias). A model whose wins do not
    depend on length (wins on 30 rows of equal length) keeps a high LC win rate."""
    gamed = [(("x" * 50, "y" * 100, 2.0) if i % 4 else ("x" * 100, "y" * 50, 1.0)) for i in range(40)]
    ann = read_alpaca_annotations(annotations_file(tmp_path / "a.json", gamed))
    assert win_rate_stats([a["preference"] for a in ann])["win_rate"] == pytest.approx(75.0)
    lc = length_controlled_win_rate(ann, glm="length_controlled_minimal")
    assert 45 < lc["length_controlled_winrate"] < 65  # 62.0 with the official CV choice of C
    assert lc["weights"]["np.tanh(std_delta_len)"] < 0  # the baseline longer -> the model less preferred
    honest = [("x" * (50 + i % 3), "y" * (50 + (i + 1) % 3), 2.0 if i % 4 else 1.0) for i in range(40)]
    lc_honest = length_controlled_win_rate(read_alpaca_annotations(annotations_file(tmp_path / "b.json", honest)),
                                           glm="length_controlled_minimal")
    assert lc_honest["length_controlled_winrate"] > 65


def test_v1_needs_its_files_and_baseline_is_fifty(tmp_path):
    ann = read_alpaca_annotations(annotations_file(tmp_path / "a.json", [("a", "bb", 2.0), ("aaa", "b", 1.0)]))
    with pytest.raises(ValueError, match="instruction difficulty"):
        length_controlled_win_rate(ann)
    with pytest.raises(ValueError, match="gamed baselines"):
        length_controlled_win_rate(ann, {0: 0.1, 1: 0.2})
    same = read_alpaca_annotations(annotations_file(tmp_path / "s.json", [("a", "a", 1.5)], model="gpt4_1106_preview"))
    assert length_controlled_win_rate(same)["length_controlled_winrate"] == 50.0


def test_predict_win_rate_from_weights():
    """d_bias = 0.5 - 0 and d_diff = 1 - 0 over difficulties [-0.5, 0.5]: mean(sigmoid(0), sigmoid(1)) =
    (0.5 + 0.731059) / 2 = 61.553 %."""
    w = {"instruction_difficulty": 1.0, "not_gamed_baseline.astype(float)": 0.5}
    zero = {"instruction_difficulty": 0.0, "not_gamed_baseline.astype(float)": 0.0}
    assert predict_win_rate(w, zero, [-0.5, 0.5]) == pytest.approx(100 * (0.5 + 0.7310585786) / 2)


def test_dataset_csv_readers(tmp_path):
    (tmp_path / "instruction_difficulty.csv").write_text("index,instruction_difficulty\n0,0.25\n1,-1.5\n")
    assert read_instruction_difficulty(tmp_path / "instruction_difficulty.csv") == {0: 0.25, 1: -1.5}
    (tmp_path / "df_gamed.csv").write_text("model,index,preference,std_delta_len,instruction_difficulty,"
                                           "not_gamed_baseline\nv,0,0.8,-1.2,0.25,False\nv,1,,0.3,-1.5,False\n")
    rows = read_gamed_rows(tmp_path / "df_gamed.csv")
    assert rows[0] == {"index": 0, "preference": 0.8, "std_delta_len": -1.2, "instruction_difficulty": 0.25,
                       "not_gamed": 0.0}
    (tmp_path / "bad.csv").write_text("model,index,preference,std_delta_len,instruction_difficulty\nv,0,0.8,long,1\n")
    with pytest.raises(DataError, match=r"bad.csv:2: field 'std_delta_len': not a number"):
        read_gamed_rows(tmp_path / "bad.csv")


def test_suite_summary_and_records(tmp_path):
    """Two models' files; the config model's numbers are the metrics, each model's a category; one record per
    annotation. m1: prefs 2, 1, 1.5, 2 (twice) -> win rate 62.5, average output length (2 + 1 + 3 + 2) / 4 = 2."""
    rows = [("aa", "bb", 2.0), ("a", "b", 1.0), ("aaa", "bbb", 1.5), ("a", "bb", 2.0)] * 2
    f1 = annotations_file(tmp_path / "m1.json", rows, model="m1")
    f2 = annotations_file(tmp_path / "m2.json", [(a, b, 3 - p if p != 1.5 else p) for a, b, p in rows], model="m2")
    written = []
    ctx = SuiteContext(name="alpacaeval", data=None, respond=None, judge=None, write=written.append, done={},
                       options={"annotations": [str(f1), str(f2)], "glm": "length_controlled_minimal"},
                       model_name="m1", progress=False)
    summary = run_alpacaeval(ctx)
    assert summary["metrics"]["win_rate"] == pytest.approx(62.5) and summary["metrics"]["avg_length"] == 2
    assert summary["by_category"]["m2"]["win_rate"] == pytest.approx(37.5)
    assert len(written) == 16 and written[0]["id"] == "m1/0" and summary["num_samples"] == 16
