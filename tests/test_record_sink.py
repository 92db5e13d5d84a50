"""The record sink of novalign.data.io: atomic whole-file writes, atomic folders, and the resumable keyed appender
(a torn last line dropped with a warning and counted; damage anywhere else an error naming file and line)."""

from __future__ import annotations

import json
import logging
import os

import pytest

import novalign.data.io as io
from novalign.data.io import (
    DataError, KeyedAppender, append_jsonl, atomic_directory, read_keyed, repair_tail, write_json_atomic, write_jsonl,
)

A = b'{"id": "a", "x": 1}\n'
B = b'{"id": "b", "x": 2}\n'


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -------------------------------------------------------------------------------------------- whole files


def test_write_jsonl_bytes_and_a_failed_write_keeps_the_old_file(tmp_path):
    """[{"k": "é"}, {"n": 1}] -> the two lines '{"k": "é"}\\n{"n": 1}\\n' in UTF-8 (é is C3 A9, not \\u00e9),
    count 2, no temporary file left. A third record holding a set (no JSON type) fails with a TypeError naming
    'record 2' of that file, and the file still holds the first write."""
    path = tmp_path / "sub" / "out.jsonl"
    assert write_jsonl(path, iter([{"k": "é"}, {"n": 1}])) == 2
    assert path.read_bytes() == b'{"k": "\xc3\xa9"}\n{"n": 1}\n'
    with pytest.raises(TypeError, match=r"out\.jsonl: record 2: cannot be written as JSON"):
        write_jsonl(path, [{"n": 2}, {"s": {1}}])
    assert path.read_bytes() == b'{"k": "\xc3\xa9"}\n{"n": 1}\n' and _leftovers(path.parent) == []
    assert write_jsonl(path, [{"s": {1}}], default=sorted) == 1 and path.read_text() == '{"s": [1]}\n'
    assert write_jsonl(path, []) == 0 and path.read_bytes() == b""


def test_write_json_atomic(tmp_path):
    """{"b": 1, "a": [2]} with indent 1 and sorted keys -> '{\\n "a": [\\n  2\\n ],\\n "b": 1\\n}\\n'; an object JSON
    cannot hold raises before the file is touched."""
    path = tmp_path / "s.json"
    write_json_atomic(path, {"b": 1, "a": [2]}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    with pytest.raises(TypeError, match=r"s\.json: cannot be written as JSON"):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"a": [2], "b": 1} and _leftovers(tmp_path) == []


def test_atomic_directory_replaces_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "w").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("killed")
    assert (out / "w").read_text() == "1" and _leftovers(tmp_path) == []
    with atomic_directory(out) as tmp:
        (tmp / "v").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["v"] and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- torn tails


def test_repair_tail_cuts_only_a_torn_last_line(tmp_path, caplog, monkeypatch):
    """A + B + '{"id": "c", "x' (14 bytes, no newline) -> cut back to A + B, 1 dropped, warned as line 3 with
    its 14 bytes. A + '{"id": "b"}' (parses; only the newline lost) -> the newline is added, 0 dropped. A clean
    file and a missing one: 0, untouched. With 4-byte blocks the backward search for the last newline crosses
    blocks (A is 20 bytes) and still cuts at byte 20."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(A + B + b'{"id": "c", "x')
    with caplog.at_level(logging.WARNING, logger="novalign.data.io"):
        assert repair_tail(path) == 1
    assert path.read_bytes() == A + B
    assert "r.jsonl:3: dropped a truncated last record (14 bytes" in caplog.text
    path.write_bytes(A + b'{"id": "b"}')
    assert repair_tail(path) == 0 and path.read_bytes() == A + b'{"id": "b"}\n'
    assert repair_tail(path) == 0 and path.read_bytes() == A + b'{"id": "b"}\n'
    assert repair_tail(tmp_path / "missing.jsonl") == 0
    monkeypatch.setattr(io, "_TAIL_BLOCK", 4)
    path.write_bytes(A + b'{"id": "b", "x": 2')
    assert repair_tail(path) == 1 and path.read_bytes() == A
    path.write_bytes(b'{"id"')  # the only line is torn: the file becomes empty
    assert repair_tail(path) == 1 and path.read_bytes() == b""


def test_read_keyed_rejects_damage_before_the_last_line(tmp_path):
    """Only the last line may be torn. 'not json' on line 2 of 3 -> DataError 'k.jsonl:2: malformed JSON';
    a line without the key -> 'k.jsonl:2: field 'id''; the key 'a' again on line 3 -> names line 1 too."""
    path = tmp_path / "k.jsonl"
    path.write_bytes(A + b"not json\n" + B)
    with pytest.raises(DataError, match=r"k\.jsonl:2: malformed JSON"):
        read_keyed(path, "id")
    path.write_bytes(A + b'{"x": 3}\n')
    with pytest.raises(DataError, match=r"k\.jsonl:2: field 'id': a record without its key field 'id'"):
        read_keyed(path, "id")
    path.write_bytes(A + B + A)
    with pytest.raises(DataError, match=r"k\.jsonl:3: field 'id': id 'a' written twice \(also on line 1"):
        read_keyed(path, "id")
    path.write_bytes(b'{"id": 7}\n\n' + B + b'{"id": "c"')  # blank line skipped; the key is str()ed
    done, dropped = read_keyed(path, "id")
    assert (sorted(done), done["7"], dropped) == (["7", "b"], {"id": 7}, 1)


# ---------------------------------------------------------------------------------------- the appender


def test_appender_resumes_and_each_record_is_on_disk_when_append_returns(tmp_path, monkeypatch):
    """A file holding a, b and a torn 'c' (a kill mid-write): the appender reports done = {a, b} and
    dropped = 1. Appending c then d: after each call another handle reads the new line and os.fsync has run
    once more (2 calls for 2 records). The file is then a, b, c, d -- whole lines, no glued torn bytes."""
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    path = tmp_path / "out.jsonl"
    path.write_bytes(A + B + b'{"id": "c", "x": 3')
    with KeyedAppender(path, "id") as sink:
        assert sorted(sink.done) == ["a", "b"] and sink.dropped == 1
        fsyncs.clear()  # the repair fsynced once; count the appends only
        sink.append({"id": "c", "x": 3})
        assert path.read_bytes() == A + B + b'{"id": "c", "x": 3}\n' and len(fsyncs) == 1
        sink.append({"id": "d", "x": "ü"})
        assert path.read_text(encoding="utf-8").splitlines()[-1] == '{"id": "d", "x": "ü"}' and len(fsyncs) == 2
        assert sink.count == 2 and sorted(sink.done) == ["a", "b"]  # done: what the earlier run left
    again = KeyedAppender(path, "id")
    assert sorted(again.done) == ["a", "b", "c", "d"] and again.dropped == 0 and again.count == 0


def test_appender_refuses_a_repeated_or_missing_key_and_writes_nothing(tmp_path):
    """'a' is in the file: appending it again, a record without 'id', or one JSON cannot hold each raise and
    leave the file as it was; fresh=True starts the file over, and the file only appears with a record."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(A)
    with KeyedAppender(path, "id") as sink:
        with pytest.raises(ValueError, match="id 'a' written twice"):
            sink.append({"id": "a"})
        with pytest.raises(ValueError, match="without its key field 'id'"):
            sink.append({"x": 1})
        with pytest.raises(TypeError, match="the record with id 'z': cannot be written as JSON"):
            sink.append({"id": "z", "v": {1}})
        sink.append({"id": "z", "v": 1})
        with pytest.raises(ValueError, match="id 'z' written twice"):
            sink.append({"id": "z"})
    assert path.read_bytes() == A + b'{"id": "z", "v": 1}\n'
    fresh = KeyedAppender(path, "id", fresh=True)
    assert fresh.done == {} and not path.exists()
    fresh.append({"id": "a"})
    fresh.close()
    assert path.read_bytes() == b'{"id": "a"}\n'


def test_append_jsonl_drops_a_torn_tail_before_appending(tmp_path):
    """A log with A and a torn line: two new records land after A on their own lines (the torn bytes are gone)."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(A + b'{"step": 3, "lo')
    assert append_jsonl(path, [{"step": 3}, {"step": 4}]) == 2
    assert path.read_bytes() == A + b'{"step": 3}\n{"step": 4}\n'
    assert append_jsonl(tmp_path / "new" / "l.jsonl", [{"a": 1}]) == 1


def test_filter_jsonl_cuts_a_log_back_to_its_checkpoint(tmp_path):
    """Steps 1, 2, 3 and a torn step-4 line, cut back to step <= 2: the torn line and step 3 go (returns 1: one
    whole record removed), steps 1 and 2 stay byte for byte. A missing file stays missing; damage before the
    last line is an error, and the file is not rewritten."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    assert io.filter_jsonl(path, lambda r: r["step"] <= 2) == 1
    assert path.read_bytes() == b'{"step": 1}\n{"step": 2}\n'
    assert io.filter_jsonl(tmp_path / "none.jsonl", lambda r: False) == 0 and not (tmp_path / "none.jsonl").exists()
    path.write_bytes(b'{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: malformed JSON"):
        io.filter_jsonl(path, lambda r: r["step"] <= 2)
    assert path.read_bytes() == b'{"step": 1}\n{"st\n{"step": 3}\n'


# ------------------------------------------------------------------------------------------- reading


def test_read_valid_raises_or_counts_each_bad_record(tmp_path):
    """a.jsonl holds 4 lines: {"n": 1}, "not json", {"n": -2}, {"n": 3}; convert returns n * 10 and raises a
    DataError for a negative n. Without skip_invalid the first bad line (2, not JSON) raises naming a.jsonl:2.
    With it: [10, 30] in file order, the report counts 2 (line 2 unparsable, line 3 rejected by convert)."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"n": 1}\nnot json\n{"n": -2}\n{"n": 3}\n')

    def convert(record, where, line):
        if record["n"] < 0:
            raise DataError(where, line, "n", "negative", reason="negative n")
        return record["n"] * 10

    with pytest.raises(DataError, match=r"a\.jsonl:2"):
        io.read_valid([path], convert, skip_invalid=False)
    values, report = io.read_valid([path], convert, skip_invalid=True)
    assert values == [10, 30]
    assert report.total == 2 and report.counts["negative n"] == 1


def test_atomic_directory_fsyncs_every_file_before_the_rename(tmp_path, monkeypatch):
    """Two files in a nested folder: both are fsynced (and the folders) before ``out`` appears, so a power
    loss cannot leave a complete-looking folder of empty files. Counted by wrapping os.fsync."""
    synced: list[str] = []
    real = os.fsync

    def counting(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    out = tmp_path / "ckpt"
    with atomic_directory(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub" / "b.bin").write_bytes(b"b")
    names = [os.path.basename(p) for p in synced]
    assert "a.bin" in names and "b.bin" in names
    assert all(".tmp-" in p for p in synced if p.endswith(".bin"))  # synced before the rename
    assert str(tmp_path) in synced  # the parent's entry for ``out`` too
