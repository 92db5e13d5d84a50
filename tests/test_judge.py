"""Judge answer parsing (accept / reject cases worked by hand), templates, and ratings JSONL import/export.

The judge loop itself (batching, re-asks, failures) runs against a scripted HTTP judge in
``tests/test_checklist_suites.py``.
"""

from __future__ import annotations

import json

import pytest

from novalign.data.io import DataError
from novalign.eval import benchmarks as bm
from novalign.eval.judge import (
    LANGS,
    JudgeParseError,
    TemplateError,
    load_template,
    parse_checklist,
    parse_pairwise,
    parse_rating,
    parse_ux,
    ratings_to_ux_records,
    ratings_to_verdicts,
    read_ratings,
    render,
    write_ratings,
)

TEMPLATES = ("cfbench", "sysbench", "fbbench", "mtbench", "pairwise", "ux", "reask", "rl_rating",
             # instruction-following data (novalign/flywheel/constraints): the LLM prompts, and the lesson
             "ifdata_decompose", "ifdata_evolve", "ifdata_inspect", "ifdata_propose", "ifdata_rationalize",
             "ifdata_reverse", "ifdata_revise", "ifdata_sysfilter", "ifdata_validate", "textbook")
WITH_JSON_EXAMPLE = ("cfbench", "sysbench", "fbbench", "ux", "ifdata_inspect", "ifdata_propose", "ifdata_validate")


# ---------------------------------------------------------------------------------------- checklist


def test_parse_checklist_accepts_exactly_one_verdict_per_criterion():
    """English and Chinese keys/values; keys in any order; fenced JSON; booleans.

    '{"results": {"2": "no", "1": "yes", "3": "YES"}}' with 3 criteria -> [True, False, True] (by number, not
    by order of appearance); '评判结果' {"1": "是", "2": "否"} -> [True, False].
    """
    assert parse_checklist('{"reasons": "r", "results": {"2": "no", "1": "yes", "3": "YES"}}', 3) == [True, False, True]
    assert parse_checklist('```json\n{"评判理由": "略", "评判结果": {"1": "是", "2": "否"}}\n```', 2) == [True, False]
    assert parse_checklist('Here: {"results": {"1": true}}', 1) == [True]


@pytest.mark.parametrize("text, n, message", [
    ('{"results": {"1": "yes", "2": "no"}}', 3, "missing ['3']"),          # one criterion not judged
    ('{"results": {"1": "yes", "2": "no", "4": "no"}}', 2, "unexpected ['4']"),  # an extra one
    ('{"results": {"1": "maybe"}}', 1, "criterion 1"),                       # not yes/no
    ('{"results": {"1": 1}}', 1, "criterion 1"),                             # numbers are not verdicts
    ('{"verdicts": ["yes"]}', 1, '"results"'),                              # wrong shape
    ("1. yes\n2. no", 2, "no JSON"),                                         # prose
    ('["yes", "no"]', 2, "JSON object"),                                     # a list, not an object
])
def test_parse_checklist_rejects(text, n, message):
    with pytest.raises(JudgeParseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_checklist(text, n)


# ----------------------------------------------------------------------------------- rating / pairwise


def test_parse_rating_accepts_one_bracketed_rating_in_range():
    """'Rating: [[7]]' -> 7; '[[8.5]]' -> 8.5; the same rating twice is one rating -> 6."""
    assert parse_rating("The answer is good. Rating: [[7]]") == 7.0
    assert parse_rating("[[8.5]]") == 8.5
    assert parse_rating("[[6]] ... so [[6]]") == 6.0
    assert parse_rating("评分：[[10]]") == 10.0


@pytest.mark.parametrize("text, message", [
    ("Rating: 7", "no rating"), ("[[11]]", "outside"), ("[[0]]", "outside"), ("[[3]] or [[9]]", "more than one"),
    ("[7]", "no rating"),
])
def test_parse_rating_rejects(text, message):
    with pytest.raises(JudgeParseError, match=message):
        parse_rating(text)


def test_parse_pairwise():
    """[[A]] -> A, [[B]] -> B, [[C]] -> tie; none or two different verdicts are rejected."""
    assert parse_pairwise("A follows the instructions. [[A]]") == "A"
    assert parse_pairwise("[[ B ]]") == "B"
    assert parse_pairwise("equally good [[C]]") == "tie"
    for bad in ("A is better", "[[A]] or maybe [[B]]", "[[D]]"):
        with pytest.raises(JudgeParseError):
            parse_pairwise(bad)


def test_parse_ux_needs_every_dimension_and_pass_fail_values():
    dims = bm.UX_DIMENSIONS
    text = json.dumps({"reasons": "ok", "ratings": {"intent_comprehension": "pass", "result_accuracy": "fail",
                                                    "language_quality": "pass", "safety": True}})
    assert parse_ux(text, dims) == {"intent_comprehension": True, "result_accuracy": False,
                                    "language_quality": True, "safety": True}
    with pytest.raises(JudgeParseError, match=r"missing \['safety'\]"):
        parse_ux('{"intent_comprehension": "pass", "result_accuracy": "pass", "language_quality": "pass"}', dims)
    with pytest.raises(JudgeParseError, match="unexpected"):
        parse_ux(json.dumps({d: "pass" for d in [*dims, "humour"]}), dims)
    with pytest.raises(JudgeParseError, match="safety"):
        parse_ux(json.dumps({d: "ok" if d == "safety" else "pass" for d in dims}), dims)


# ----------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("name", TEMPLATES)
def test_bundled_templates_exist_in_both_languages_and_render(name, lang):
    """Every template renders with the values its suite passes, leaving its JSON example intact."""
    values = {"prompt": "P", "reference": "R", "response": "A", "criteria": "1. c", "num_criteria": 1, "system": "S", "history": "H",
                  "question": "Q", "query": "Q", "first_response": "F", "feedback": "FB", "second_response": "A2", "conversation": "C",
                  "answer": "A", "answer_a": "AA", "answer_b": "BB", "dimensions": "d", "error": "E",
                  "constraints": "- c", "attributes": "[a1] x", "text": "T", "library": "L", "max_new": 2,
                  "missing": "[a1] x", "suggestions": "S", "previous": "P0"}
    text = render(load_template(name, lang), **values)
    assert "{" not in text or name in WITH_JSON_EXAMPLE  # only those show a JSON example
    assert not [p for p in ("{prompt}", "{response}", "{answer}", "{error}") if p in text]


@pytest.mark.parametrize("name", TEMPLATES)
def test_bundled_translations_ask_for_the_same_values(name):
    """A template's zh text uses the same placeholders as its en text (a translation that drops {constraints}
    would silently send the model a prompt without them); the lesson template has as many sections in both."""
    from novalign.eval.judge import _PLACEHOLDER
    from novalign.flywheel.constraints.textbook import required_sections

    en, zh = load_template(name, "en"), load_template(name, "zh")
    assert set(_PLACEHOLDER.findall(en)) == set(_PLACEHOLDER.findall(zh))
    if name == "textbook":
        assert len(required_sections(en)) == len(required_sections(zh)) == 5


def test_template_dir_overrides_and_missing_values_are_named(tmp_path):
    (tmp_path / "mtbench.en.txt").write_text("Grade {answer} for {conversation} ({reference})", encoding="utf-8")
    assert load_template("mtbench", "en", tmp_path).startswith("Grade {answer}")
    assert "评分" in load_template("mtbench", "zh", tmp_path)  # no zh override: the bundled one
    with pytest.raises(TemplateError, match=r"\['reference'\]"):
        render(load_template("mtbench", "en", tmp_path), answer="a", conversation="c")
    with pytest.raises(TemplateError, match="fr"):
        load_template("mtbench", "fr")
    with pytest.raises(TemplateError, match="nosuch.en.txt"):
        load_template("nosuch", "en", tmp_path)


# ------------------------------------------------------------------------------------------- ratings


def test_ratings_round_trip_and_aggregate(tmp_path):
    """Two raters on sample 1 and one on sample 2, GSB of m1 vs m2.

    Rows: (m1, m2, good), (m2, m1, good) -> flipped to bad for m1, (m1, m2, same) -> G 1, S 1, B 1, score 0.
    Dimension rows: sample 1 all four pass (math); sample 2 safety fails (math) -> pass rate 1/2.
    """
    rows = [{"id": "1", "model_a": "m1", "model_b": "m2", "verdict": "good", "rater": "ann"},
            {"id": "1", "model_a": "m2", "model_b": "m1", "verdict": "good", "rater": "bob"},
            {"id": "2", "model_a": "m1", "model_b": "m2", "verdict": "same", "rater": "ann"}]
    rows += [{"id": "1", "model": "m1", "dimension": d, "pass": True, "rater": "ann", "category": "math"} for d in bm.UX_DIMENSIONS]
    rows += [{"id": "2", "model": "m1", "dimension": d, "pass": d != "safety", "rater": "ann", "category": "math"}
             for d in bm.UX_DIMENSIONS]
    path = tmp_path / "ratings.jsonl"
    write_ratings(path, rows)
    back = read_ratings(path)
    assert back == rows
    verdicts = [v["verdict"] for v in ratings_to_verdicts(back, "m1", "m2")]
    assert verdicts == ["good", "bad", "same"]
    assert bm.gsb(verdicts)["score"] == 0.0
    ux = ratings_to_ux_records(back, "m1")
    assert bm.ux_pass_rate(ux)["pass_rate"] == 0.5


@pytest.mark.parametrize("row, field", [
    ({"id": "1", "model_a": "a", "model_b": "b", "verdict": "better", "rater": "r"}, "verdict"),
    ({"id": "1", "model_a": "a", "verdict": "good", "rater": "r"}, "model_b"),
    ({"id": "1", "model": "a", "dimension": "safety", "pass": "yes", "rater": "r"}, "pass"),
    ({"id": "1", "model": "a", "pass": True, "rater": "r"}, "dimension"),
])
def test_bad_ratings_name_file_line_and_field(tmp_path, row, field):
    path = tmp_path / "r.jsonl"
    good = {"id": "0", "model_a": "a", "model_b": "b", "verdict": "good", "rater": "r"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_ratings(path)
    assert err.value.line == 2 and err.value.field == field
    assert f"{path}:2: field '{field}'" in str(err.value)


def test_non_utf8_user_template_names_the_file_and_byte(tmp_path):
    """A Latin-1 template ("caf\\xe9") fails as a TemplateError naming the file and byte 3, not a bare
    UnicodeDecodeError."""
    (tmp_path / "absolute.en.txt").write_bytes(b"caf\xe9 {answer}")
    with pytest.raises(TemplateError, match=r"absolute\.en\.txt: byte 3: judge templates must be UTF-8"):
        load_template("absolute", "en", tmp_path)
