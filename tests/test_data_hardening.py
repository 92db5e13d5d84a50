"""Careless data and headers (issue 22 item 9): each gives a clear error naming file, line and field, or
honours ``skip_invalid``; none is silently dropped or silently accepted."""

from __future__ import annotations

import json
import os

import pytest

from novalign.data.io import DataError, SkipReport
from novalign.data.preference import load_preference_dataset
from novalign.llm.limits import RetryPolicy, parse_retry_after
from novalign.pas.data import load_categories, read_pool


def test_retry_after_that_is_no_number_of_seconds_falls_back_to_backoff():
    """``float()`` takes "nan", "inf" and "-1"; none of them is a wait, so the computed backoff is used:
    attempt 2 with base 0.5 waits cap/2 .. cap with cap = 0.5 * 2 = 1.0, i.e. in [0.5, 1.0]."""
    for bad in ("nan", "inf", "-1", "NaN"):
        assert parse_retry_after({"retry-after": bad}) is None, bad
        assert parse_retry_after({"retry-after-ms": bad}) is None, bad
    policy = RetryPolicy(base_delay=0.5, max_delay=30)
    assert 0.5 <= policy.delay(2, retry_after=float("nan")) <= 1.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_nan_rank_and_non_string_content_are_errors(tmp_path, tiny_model_dir):
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    group = {"prompt": "Q?", "responses": [{"content": "a", "rank": 1}, {"content": "b", "rank": float("nan")},
                                           {"content": "c", "rank": 3}]}
    path = tmp_path / "pref.jsonl"
    path.write_text(json.dumps(group).replace("NaN", "NaN") + "\n", encoding="utf-8")  # json.dumps writes NaN
    with pytest.raises(DataError) as info:
        load_preference_dataset([path], tok, max_length=256)
    assert info.value.field == "responses[1].rank" and info.value.line == 1 and str(path) in str(info.value)
    pair = {"prompt": "Q?", "chosen": {"role": "assistant", "content": 42}, "rejected": "no"}
    _write(path, [pair])
    with pytest.raises(DataError) as info:
        load_preference_dataset([path], tok, max_length=256)
    assert info.value.field == "chosen.content" and "int" in info.value.problem


def test_pas_pool_honours_skip_invalid_for_malformed_lines_and_names_an_empty_file(tmp_path):
    categories = load_categories(None)
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "Write a poem."}\n{not json\n{"prompt": "Plan a trip."}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_pool([str(pool)], categories)
    assert info.value.line == 2
    skip = SkipReport()
    assert [r["prompt"] for r in read_pool([str(pool)], categories, skip)] == ["Write a poem.", "Plan a trip."]
    assert skip.total == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl.*no records"):
        read_pool([str(empty)], categories)


def test_stale_temp_folders_of_killed_writers_are_cleaned(tmp_path):
    """A dead pid's ``.model.tmp-<pid>`` goes; its ``.model.old-<pid>`` is restored when ``model`` is missing
    (killed between the two renames); a live pid's folders stay."""
    import subprocess

    from novalign.data.io import atomic_directory

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "model"
    (tmp_path / f".model.tmp-{dead.pid}").mkdir()
    (tmp_path / f".model.old-{dead.pid}").mkdir()
    (tmp_path / f".model.old-{dead.pid}" / "weights").write_text("previous")
    live = tmp_path / f".model.tmp-{os.getppid()}"
    live.mkdir()
    with atomic_directory(out) as tmp:
        assert (out / "weights").read_text() == "previous"  # restored before the new write starts
        (tmp / "weights").write_text("new")
    assert (out / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", live.name])


def test_a_huge_record_is_refused_before_tokenizing(tmp_path, tiny_model_dir):
    """With max_length 64 and the tiny tokenizer's longest token string of L characters, a record of more
    than 64 * L characters cannot fit: it is a DataError naming file and line, and no tokenizer call is
    made for it (the 2 MB record would otherwise be tokenized in full first)."""
    from novalign.data.chat import load_chat_dataset, longest_token_chars
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    limit = 64 * longest_token_chars(tok)
    path = _write(tmp_path / "sft.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "x" * 2_000_000}, {"role": "assistant", "content": "ok"}]},
    ])
    small = _write(tmp_path / "small.jsonl", [json.loads(path.read_text().splitlines()[0])])
    calls = []
    original = tok.apply_chat_template
    tok.apply_chat_template = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        load_chat_dataset([small], tok, max_length=64)
        per_small = len(calls)
        calls.clear()
        with pytest.raises(DataError) as info:
            load_chat_dataset([path], tok, max_length=64)
        samples, report = load_chat_dataset([path], tok, max_length=64, skip_invalid=True)
    finally:
        tok.apply_chat_template = original
    assert info.value.line == 2 and str(limit) in info.value.problem
    assert len(samples) == 1 and report.total == 1
    assert len(calls) == 2 * per_small  # the huge record was never rendered, in either load


def test_an_empty_data_file_is_an_error_naming_it(tiny_model_dir, tmp_path):
    """SFT and preference loaders: an empty file (or only blank lines) stops with its path, not a run on 0 records."""
    from novalign.data.chat import load_chat_dataset
    from novalign.data.io import DataError
    from novalign.data.preference import load_preference_dataset
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: the file holds no records"):
        load_chat_dataset([empty], tok, max_length=64)
    with pytest.raises(DataError, match="empty.jsonl: the file holds no records"):
        load_preference_dataset([empty], tok, max_length=64)
