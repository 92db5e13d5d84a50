"""The flywheel's CPU steps by hand (dedup, MinHash, filters, scripts, language, sampling, balance), and the
pipeline around them: step folders keyed by config, reruns of what changed only, record-granular resume over a
torn parts file, bad records as file:line errors, and `novalign data run`'s config errors."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from novalign.cli import app
from novalign.config.pipeline import FilterConfig
from novalign.data.io import DataError
from novalign.flywheel.pipeline import Pipeline
from novalign.flywheel.steps.dedup import exact_duplicates, near_duplicates, normalize, shingles, signatures
from novalign.flywheel.steps.filters import detect_language, filter_reason, script_fractions
from novalign.flywheel.steps.sampling import sample_positions, stratum_counts


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_exact_dedup_by_hand():
    """NFKC folds the full-width 'Ｈｅｌｌｏ' to 'Hello'; lowercasing and whitespace collapsing make texts 0, 1
    and 3 all 'hello world' -> 1 and 3 are duplicates of 0; 'hello, world' differs by its comma unless
    punctuation is stripped, then it is a duplicate of 0 too."""
    texts = ["Hello World", "  hello   world ", "hello, world", "Ｈｅｌｌｏ world"]
    norm = [normalize(t) for t in texts]
    assert norm == ["hello world", "hello world", "hello, world", "hello world"]
    assert exact_duplicates(norm) == [None, 0, None, 0]
    stripped = [normalize(t, strip_punctuation=True) for t in texts]
    assert exact_duplicates(stripped) == [None, 0, 0, 0]


def test_shingles_and_minhash_by_hand():
    """'abcdefghij' has the 3-grams abc..hij (8); 'abcdefghiX' shares abc..ghi (7) and adds 'hiX': Jaccard =
    7 / (8 + 1) = 0.778. 'zyxwvutsrq' shares none. At threshold 0.6 the second is a near duplicate of the
    first (its estimate, 256 permutations, within 0.12 of 0.778), the third is kept. A text shorter than n is
    one shingle."""
    assert shingles("abcd", 2) == {b"ab", b"bc", b"cd"}
    assert shingles("ab", 3) == {b"ab"}
    assert shingles("a b c d", 2, "word") == {b"a b", b"b c", b"c d"}
    texts = ["abcdefghij", "abcdefghiX", "zyxwvutsrq"]
    # normalize() lowercases, so X -> x: still a new shingle 'hix'
    sigs = signatures(texts, ngram=3, unit="char", num_perm=256, seed=1)
    found = near_duplicates(sigs, threshold=0.6, num_perm=256, seed=1)
    assert found[0] is None and found[2] is None
    assert found[1][0] == 0 and abs(found[1][1] - 7 / 9) < 0.12


def test_filter_rules_by_hand():
    """Each rule in turn: 'hi' (2 chars) is shorter than 3; 'a b c d' has 4 words > 3; '中文abc' is 3 latin
    letters of 5 = 0.6 >= 0.5, kept; '中文字a' is 1 of 4 = 0.25 < 0.5 -> dropped by script; '{"a": 1}' is JSON,
    '{a' is not. 'abc中': 3 of 4 letters latin, 1 han; '123 !' has no letters."""
    c = FilterConfig(min_chars=3, max_words=3)
    assert filter_reason("hi", c) == "shorter than 3 chars"
    assert filter_reason("a b c d", c) == "more than 3 words"
    assert filter_reason("a b c", c) is None
    s = FilterConfig(scripts=["latin"], min_script_fraction=0.5)
    assert filter_reason("中文abc", s) is None
    assert filter_reason("中文字a", s) == "script not latin"
    j = FilterConfig(require_json=True)
    assert filter_reason('{"a": 1}', j) is None and filter_reason("{a", j) == "not JSON"
    assert script_fractions("abc中") == {"latin": 0.75, "han": 0.25}
    assert script_fractions("123 !") == {}


def test_language_detection():
    assert detect_language("The quick brown fox jumps over the lazy dog and runs away.") == "en"
    assert detect_language("这是一个用来测试语言识别的中文句子。") == "zh-cn"
    assert detect_language("   ") == "unknown" and detect_language("1234") == "unknown"


def test_stratum_counts_by_hand():
    """Available a 10, b 4, c 6 with shares 1/2, 1/4, 1/4: T = min(10/0.5, 4/0.25, 6/0.25) = min(20, 16, 24) = 16
    -> a 8, b 4, c 4. With total 10: exact 5, 2.5, 2.5 -> floors 5, 2, 2 (9); the one left goes to the larger
    remainder, b and c tie at 0.5, the name breaks it -> a 5, b 3, c 2."""
    avail = {"a": 10, "b": 4, "c": 6}
    shares = {"a": 2, "b": 1, "c": 1}  # normalized to 1/2, 1/4, 1/4
    assert stratum_counts(avail, shares, None) == {"a": 8, "b": 4, "c": 4}
    assert stratum_counts(avail, shares, 10) == {"a": 5, "b": 3, "c": 2}
    assert stratum_counts({"a": 3}, {"a": 1, "z": 1}, None) == {"a": 0, "z": 0}  # a named stratum with none
    assert len(sample_positions(10, 4, 0)) == 4 and sample_positions(10, 4, 0) == sample_positions(10, 4, 0)


def _prompts(tmp_path):
    return _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Hello World", "cap": "a"}, {"prompt": "hello  world", "cap": "a"},
        {"prompt": "The quick brown fox jumps over the lazy dog", "cap": "b"},
        {"prompt": "the quick brown fox jumps over the lazy dog!", "cap": "b"},
        {"prompt": "x", "cap": "c"}, {"prompt": "Another prompt entirely, about cooking rice", "cap": "c"},
        {"prompt": "A third b prompt on sorting lists in Python", "cap": "b"},
    ])


def _pipeline(tmp_path, run, min_chars=2, workers=1):
    p = Pipeline(tmp_path / run, progress=False, workers=workers, batch_size=2)
    p.source("p", _prompts(tmp_path))
    p.step("exact", "exact_dedup", {})
    p.step("near", "minhash_dedup", {"threshold": 0.7, "ngram": 3, "num_perm": 128})
    p.step("len", "filter", {"min_chars": min_chars})
    p.step("bal", "balance", {"field": "cap", "targets": {"b": 1, "c": 1}})
    return p


def test_pipeline_counts_and_drops(tmp_path):
    """7 prompts: exact drops 'hello  world' (of 'Hello World'); MinHash drops the fox with '!' (its 43
    characters have 39 distinct 3-grams, the '!' adds 'og!': Jaccard 39/40 = 0.975); the filter drops 'x' (1 char); balance b:c = 1:1 over b 2, c 1 -> 1 b + 1 c, 'a' not in
    targets and one b over its quota. 7 -> 6 -> 5 -> 4 -> 2, every drop in drops.jsonl with its reason."""
    result = _pipeline(tmp_path, "run").run()
    by = {s["name"]: s for s in result.steps}
    assert [(s["records_in"], s["records_out"]) for s in result.steps] == [(7, 6), (6, 5), (5, 4), (4, 2)]
    assert by["exact"]["dropped_by_reason"] == {"exact duplicate": 1}
    assert by["near"]["dropped_by_reason"] == {"near duplicate": 1}
    assert by["len"]["dropped_by_reason"] == {"shorter than 2 chars": 1}
    assert by["bal"]["dropped_by_reason"] == {"stratum not in targets": 1, "over the b quota": 1}
    drops = [json.loads(x) for x in (result.outputs["near"].parent / "drops.jsonl").read_text().splitlines()]
    assert drops[0]["_id"] == "p-4" and drops[0]["detail"]["cluster"] == "p-3"
    assert sorted(r["cap"] for r in result.records("bal")) == ["b", "c"]
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "funnel.png").stat().st_size > 1000
    assert "| near | minhash_dedup | 6 | 5 | 1 | near duplicate: 1 |" in (tmp_path / "run" / "report.md").read_text()


def test_changed_step_reruns_it_and_downstream_only(tmp_path):
    first = _pipeline(tmp_path, "run").run()
    again = _pipeline(tmp_path, "run").run()
    assert all(s["skipped"] for s in again.steps)
    changed = _pipeline(tmp_path, "run", min_chars=5).run()
    assert [s["skipped"] for s in changed.steps] == [True, True, False, False]
    assert changed.outputs["len"] != first.outputs["len"] and first.outputs["len"].is_file()  # old folder kept
    assert changed.outputs["near"] == first.outputs["near"]


def test_process_pool_matches_in_process(tmp_path):
    """The filter and MinHash signatures over 2 worker processes (chunks of 2) give the same bytes."""
    one = _pipeline(tmp_path, "one").run()
    two = _pipeline(tmp_path, "two", workers=2).run()
    for name in ("exact", "near", "len", "bal"):
        assert one.outputs[name].read_bytes() == two.outputs[name].read_bytes()


def test_resume_over_a_torn_parts_file(tmp_path):
    """A map step killed mid-write: its parts file ends in half a line. The rerun drops and counts the torn
    line, keeps the finished outcomes, redoes the rest, and writes the same bytes as an uninterrupted run."""
    full = _pipeline(tmp_path, "full").run()
    run = tmp_path / "run"
    _pipeline(tmp_path, "run").run()
    folder = next((run / "steps").glob("len-*"))
    lines = (folder / "parts.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "parts.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:10])
    for name in ("_SUCCESS", "records.jsonl", "stats.json"):
        (folder / name).unlink()
    for later in (run / "steps").glob("bal-*"):
        (later / "_SUCCESS").unlink()
    resumed = _pipeline(tmp_path, "run").run()
    stats = {s["name"]: s for s in resumed.steps}["len"]
    assert stats["torn_lines_dropped"] == 1 and stats["resumed_records"] == 2
    assert resumed.outputs["bal"].read_bytes() == full.outputs["bal"].read_bytes()


def test_bad_record_names_file_line_field(tmp_path):
    src = _jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"text": "no prompt"}, {"prompt": 3}])
    p = Pipeline(tmp_path / "run", progress=False, workers=1).source("p", src).step("len", "filter", {"min_chars": 1})
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'prompt': missing"):
        p.run()
    p = Pipeline(tmp_path / "run2", progress=False, workers=1, skip_invalid=True).source("p", src)
    result = p.step("len", "filter", {"min_chars": 1}).run()
    assert result.steps[0]["dropped_by_reason"] == {"invalid: prompt: missing": 1, "invalid: prompt: wrong type": 1}
    drops = (result.outputs["len"].parent / "drops.jsonl").read_text()
    assert "p.jsonl:3: field 'prompt': expected a string or a list (chat messages), got int" in drops


def test_cli_data_run_and_config_errors(tmp_path):
    cfg = {"run_dir": str(tmp_path / "run"), "progress": False, "workers": 1,
           "sources": {"p": {"path": str(_prompts(tmp_path))}},
           "steps": [{"name": "exact", "type": "exact_dedup"}, {"name": "near", "type": "minhash_dedup"}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    ok = runner.invoke(app, ["data", "run", str(path), "--set", "steps.1.config.threshold=0.7"])
    assert ok.exit_code == 0, ok.output
    assert "near: 6 in, " in ok.output and (tmp_path / "run" / "report.md").is_file()
    typo = runner.invoke(app, ["data", "run", str(path), "--set", "steps.1.config.treshold=0.7"])
    assert typo.exit_code == 2 and "did you mean 'threshold'?" in typo.output
    bad_type = runner.invoke(app, ["data", "run", str(path), "--set", "steps.1.type=minhash_dedupe"])
    assert bad_type.exit_code == 2 and "did you mean 'minhash_dedup'?" in bad_type.output
    bad_input = runner.invoke(app, ["data", "run", str(path), "--set", "steps.1.input=exakt"])
    assert bad_input.exit_code == 2 and "did you mean 'exact'?" in bad_input.output
    top = runner.invoke(app, ["data", "run", str(path), "--set", "workerz=2"])
    assert top.exit_code == 2 and "did you mean 'workers'?" in top.output
    helped = runner.invoke(app, ["data", "run", "--help-config"])
    assert helped.exit_code == 0 and "threshold" in helped.output and "run_dir" in helped.output


def test_parquet_and_datasets_folder_sources(tmp_path):
    """The same three records as Parquet and as a `datasets` save_to_disk folder (state.json naming its Arrow
    stream files, as datasets writes them) read alike; ids from id_field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from novalign.config.pipeline import SourceConfig
    from novalign.flywheel.pipeline import read_source

    table = pa.table({"uid": ["a", "b", "c"], "prompt": ["one", "two", "three"]})
    pq.write_table(table, tmp_path / "p.parquet")
    folder = tmp_path / "hf"
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    _, _, parquet_rows = read_source("p", SourceConfig(path=str(tmp_path / "p.parquet"), id_field="uid"))
    _, _, hf_rows = read_source("p", SourceConfig(path=str(folder), id_field="uid"))
    assert parquet_rows == hf_rows and [r["_id"] for _, r in hf_rows] == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="state.json"):
        read_source("p", SourceConfig(path=str(tmp_path)))


def test_duplicate_source_ids_are_an_error(tmp_path):
    from novalign.config.pipeline import SourceConfig
    from novalign.flywheel.pipeline import read_source

    src = _jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}, {"id": 1, "prompt": "c"}])
    with pytest.raises(DataError, match=r"p\.jsonl:3: field 'id': id '1' also on line 1"):
        read_source("p", SourceConfig(path=str(src), id_field="id"))


def test_pref_groups_by_hand(tmp_path):
    """Judge scale 1..10 mapped to [0, 1]. Prompt A: '4' (10 -> 1.0), '5' (1 -> 0.0), '4' again -> a group of
    ['4' 1.0, '5' 0.0] carried by A's first sample; '5' merged into it; the repeat of '4' dropped as a
    near-duplicate. Prompt B: 'seven' (5), 'seven' (5): one kept, one score -> both dropped, no difference.
    Prompt C: its judgment failed (null) -> dropped, no score. 6 in, 1 out, 4 dropped, 1 merged."""
    rows = [("A", "4", 10), ("A", "5", 1), ("A", "4", 10), ("B", "seven", 5), ("B", "seven", 5), ("C", "x", None)]
    src = _jsonl(tmp_path / "s.jsonl", [{"prompt": p, "response": r, "judgment": j, "capability": "math"}
                                        for p, r, j in rows])
    p = Pipeline(tmp_path / "run", progress=False, workers=1).source("s", src)
    result = p.step("groups", "pref_groups", {}).run()
    stats = result.steps[0]
    assert (stats["records_in"], stats["records_out"], stats["dropped"], stats["merged"]) == (6, 1, 4, 1)
    assert stats["dropped_by_reason"] == {"no score difference in its group": 2, "near-duplicate response": 1,
                                          "no score": 1}
    assert result.records("groups") == [{"_id": "s-1/group", "prompt": [{"role": "user", "content": "A"}],
                                         "capability": "math",
                                         "responses": [{"content": "4", "score": 1.0}, {"content": "5", "score": 0.0}]}]
