"""The annotation hand-off format (novalign.data.annotation): tasks and results round-trip, bad lines name
file, line and field, and check_result catches results that do not fit their task."""

import json

import pytest

from novalign.data.annotation import (AnnotationResult, AnnotationTask, check_result, ranks_of, read_results,
                                      read_tasks, write_results, write_tasks)
from novalign.data.io import DataError

TASK = {"task_id": "p1", "prompt": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Name a fruit."}],
        "labels": {"ability": "KQA"},
        "responses": [{"response_id": "r0", "content": "A stone.", "model": "m1"},
                      {"response_id": "r1", "content": "An apple.", "model": "m2", "critique": "fine"}]}
RESULT = {"task_id": "p1", "annotator": "a1", "ranking": [["r1"], ["r0"]],
          "scores": {"r0": {"helpfulness": 1, "fluency": 4, "safety": 5}},
          "spans": [{"response_id": "r0", "start": 2, "end": 7, "kind": "factual", "note": "not a fruit"},
                    {"response_id": "r0", "start": 0, "end": 4, "kind": "other"}],
          "edits": [{"response_id": "r0", "new_response_id": "r0-edit", "content": "A pear."}]}


def test_round_trip(tmp_path):
    tasks = [AnnotationTask.model_validate(TASK)]
    results = [AnnotationResult.model_validate(RESULT)]
    write_tasks(tmp_path / "t.jsonl", tasks)
    write_results(tmp_path / "r.jsonl", results)
    got_t, _ = read_tasks([tmp_path / "t.jsonl"])
    got_r, _ = read_results([tmp_path / "r.jsonl"])
    assert got_t == tasks and got_r == results
    assert check_result(got_r[0], got_t[0]) == []
    assert got_t[0].messages()[0] == {"role": "system", "content": "Be brief."}


def test_bad_lines_name_file_line_field(tmp_path):
    bad = dict(RESULT, scores={"r0": {"helpfulness": 7}})
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(RESULT) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as err:
        read_results([path])
    assert err.value.line == 2 and err.value.field == "scores" and "outside 1-5" in str(err.value)
    kept, report = read_results([path], skip_invalid=True)
    assert len(kept) == 1 and report.total == 1
    tpath = tmp_path / "t.jsonl"
    tpath.write_text(json.dumps(TASK) + "\n" + json.dumps(TASK) + "\n")
    with pytest.raises(DataError, match=r"t.jsonl:2: field 'task_id': duplicate task_id 'p1' \(first at .*t.jsonl:1\)"):
        read_tasks([tpath])
    span_bad = dict(RESULT, spans=[{"response_id": "r0", "start": 5, "end": 5}])
    tpath.write_text(json.dumps(span_bad) + "\n")
    with pytest.raises(DataError, match="spans\\[0\\]"):
        read_results([tpath])


def test_check_result_catches_misfits():
    task = AnnotationTask.model_validate(TASK)
    res = AnnotationResult.model_validate(dict(RESULT, ranking=[["r1"]],
                                               spans=[{"response_id": "r0", "start": 0, "end": 99},
                                                      {"response_id": "zz", "start": 0, "end": 1}]))
    problems = check_result(res, task)
    assert any("not a partition" in p for p in problems)
    assert any("past the response's 8 characters" in p for p in problems)
    assert any("unknown response 'zz'" in p for p in problems)


def test_ranks_of_ties():
    """[[b], [a, c]]: b is rank 1, a and c tie at rank 2."""
    assert ranks_of([["b"], ["a", "c"]]) == {"b": 1, "a": 2, "c": 2}
