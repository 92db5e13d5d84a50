"""novalign.data.fields.get_path, the one dotted-path reader of the flywheel steps."""

from novalign.data.fields import get_path


def test_get_path_reads_nested_fields_and_falls_back():
    """{"labels": {"ability": "Math", "n": 0}}: "labels.ability" -> "Math"; "labels.n" -> 0 (a falsy value is a
    value, not missing); "labels.domain" -> default; "labels.ability.x" -> default (a string has no fields)."""
    rec = {"labels": {"ability": "Math", "n": 0}}
    assert get_path(rec, "labels.ability") == "Math"
    assert get_path(rec, "labels.n", "missing") == 0
    assert get_path(rec, "labels.domain") is None
    assert get_path(rec, "labels.ability.x", "missing") == "missing"
