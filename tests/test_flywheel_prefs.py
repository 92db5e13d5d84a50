"""The flywheel's preference step (report 3.3) and capability mixing: the pure functions by hand, bad input,
and ``novalign data prefs`` end to end on files that are not the world's."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from novalign.data.io import DataError
from novalign.flywheel.mix import group_by_field, mix_capabilities
from novalign.flywheel.prefs import build_groups, read_prompts, rouge_filter, score


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_rouge_filter_by_hand():
    """'the cat sat' vs 'the cat sat down': LCS 3, P = 3/4, R = 3/3, F1 = 2*0.75*1/1.75 = 0.857.
    Threshold 0.8 drops the second (0.857 >= 0.8) and the exact repeat; 0.9 keeps the second."""
    texts = ["the cat sat", "the cat sat down", "a dog ran", "the cat sat"]
    assert rouge_filter(texts, 0.8) == ([0, 2], 2)
    assert rouge_filter(texts, 0.9) == ([0, 1, 2], 1)


def test_build_groups_by_hand():
    """Three prompts, threshold 0.8.

    p0 (math): "4", "", "5", "4"  scores 1, 0, 0, 1 -> "" dropped (empty), the second "4" dropped (exact
        repeat), kept "4" (1) and "5" (0): two distinct scores -> a group of 2.
    p1 (math): "7", "7"  scores 1, 1 -> one kept, one score -> no signal.
    p2 (if):   "hello world", "goodbye"  scores 0.5, 0.5 -> both kept, equal scores -> no signal.
    Pass rates (score >= 1): math 2 of 4 + 2 of 2 = 4 of 6 = 0.667, if 0 of 2 = 0.0.
    """
    prompts = [{"messages": [{"role": "user", "content": q}], "capability": c}
               for q, c in (("2+2?", "math"), ("3+4?", "math"), ("greet", "if"))]
    samples = [["4", "", "5", "4"], ["7", "7"], ["hello world", "goodbye"]]
    scores = [[1, 0, 0, 1], [1, 1], [0.5, 0.5]]
    groups, stats = build_groups(prompts, samples, scores, rouge_threshold=0.8)
    assert groups == [{"prompt": prompts[0]["messages"], "capability": "math",
                       "responses": [{"content": "4", "score": 1}, {"content": "5", "score": 0}]}]
    assert stats.to_dict() == {"prompts": 3, "samples": 8, "dropped_near_duplicates": 2, "dropped_empty": 1,
                               "groups_without_signal": 2, "sample_pass_rate": {"math": pytest.approx(4 / 6), "if": 0.0}, "groups": 1}


def test_score_passes_record_fields_per_sample():
    """A batch scorer gets one entry per sample: 2 + 1 samples -> fields of length 3, None where a record lacks one."""
    seen = {}

    def scorer(prompts, completions, **fields):
        seen.update(fields, n=len(prompts))
        return [float(c == (a or "")) for c, a in zip(completions, fields["answer"])]

    prompts = [{"messages": [], "answer": "x"}, {"messages": [], "other": 1}]
    assert score(prompts, [["x", "y"], ["z"]], scorer) == [[1.0, 0.0], [0.0]]
    assert seen == {"answer": ["x", "x", None], "other": [None, None, 1], "n": 3}


def test_mix_capabilities_counts_and_order():
    """a (focus) 4 records in full, b 10 records at 0.25 -> int(2.5) = 2 sampled; order: a, then b's sample."""
    data = {"a": [{"i": i} for i in range(4)], "b": [{"i": 10 + i} for i in range(10)]}
    rows = mix_capabilities(data, ["a"], 0.25, seed="s")
    assert rows[:4] == data["a"] and len(rows) == 6 and all(r in data["b"] for r in rows[4:])
    assert rows == mix_capabilities(data, ["a"], 0.25, seed="s")  # seeded
    with pytest.raises(ValueError, match="focus \\['c'\\]"):
        mix_capabilities(data, ["c"], 0.1, seed=0)
    with pytest.raises(DataError, match="f.jsonl:2: field 'capability'"):
        group_by_field([("f.jsonl", 1, {"capability": "a"}), ("f.jsonl", 2, {"task": "b"})])


def test_read_prompts_forms_and_errors(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Say hi", "answer": "hi"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "answer": "A"},
    ])
    rows = read_prompts([path])
    assert rows[0] == {"answer": "hi", "messages": [{"role": "user", "content": "Say hi"}]}
    assert rows[1]["messages"] == [{"role": "user", "content": "Q"}]  # the answer turn is dropped
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "no prompt"}])
    with pytest.raises(DataError, match="bad.jsonl:2: field 'messages'"):
        read_prompts([bad])
    bad2 = _jsonl(tmp_path / "bad2.jsonl", [{"prompt": "ok", "responses": "not a list"}])
    with pytest.raises(DataError, match="bad2.jsonl:1: field 'responses'"):
        read_prompts([bad2])


def _cli(*args):
    import os

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "novalign.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_data_prefs_cli_scores_given_responses_and_feeds_the_rm(tiny_model_dir, tmp_path):
    """User prompts with their own responses (no model): exact_answer scores them, the ROUGE filter and the
    no-signal filter drop what they should, and the output reads as reward-model groups."""
    from novalign.data.preference import load_preference_dataset
    from novalign.models.load import load_tokenizer

    prompts = _jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": "What is 2 + 2?", "answer": "4", "capability": "math", "responses": ["4", "The answer is 5", "4"]},
        {"prompt": "What is 3 + 3?", "answer": "6", "capability": "math", "responses": ["6", "6"]},
    ])
    cfg = tmp_path / "prefs.yaml"
    cfg.write_text(yaml.safe_dump({"prompt_files": [str(prompts)], "output_dir": str(tmp_path / "out"),
                                   "rewards": [{"type": "exact_answer", "mode": "final"}]}))
    proc = _cli("data", "prefs", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    groups = [json.loads(line) for line in (tmp_path / "out" / "prefs.jsonl").read_text().splitlines()]
    assert [[(r["content"], r["score"]) for r in g["responses"]] for g in groups] == [[("4", 1.0), ("The answer is 5", 0.0)]]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["dropped_near_duplicates"] == 2 and stats["groups_without_signal"] == 1
    data = load_preference_dataset([tmp_path / "out" / "prefs.jsonl"], load_tokenizer(tiny_model_dir), max_length=128,
                                   use_scores=True)
    assert len(data.pairs) == 1

    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "no prompt"}])
    proc = _cli("data", "prefs", "--config", cfg, "--set", f"prompt_files=[{bad}]")
    assert proc.returncode == 2 and "bad.jsonl:1: field 'messages'" in proc.stderr
    proc = _cli("data", "prefs", "--config", cfg, "--set", "rouge_treshold=0.5")
    assert proc.returncode == 2 and "rouge_threshold" in proc.stderr  # did-you-mean


def test_data_prefs_samples_from_a_local_model(tiny_model_dir, tmp_path):
    """With `model`, n responses per prompt are sampled (seeded: a rerun gives the same file)."""
    from novalign.config import PrefsDataConfig
    from novalign.flywheel.prefs import run_prefs

    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say something {i}", "answer": "e"} for i in range(3)])

    def ratio_of_e(prompts, completions, **_):
        return [c.count("e") / max(1, len(c)) for c in completions]

    for out in ("a", "b"):
        cfg = PrefsDataConfig(prompt_files=[str(prompts)], model=str(tiny_model_dir), n=3, max_new_tokens=8,
                              output_dir=str(tmp_path / out))
        stats = run_prefs(cfg, scorer=ratio_of_e, console_print=lambda *_: None)
        assert stats.samples == 9
    assert (tmp_path / "a" / "prefs.jsonl").read_text() == (tmp_path / "b" / "prefs.jsonl").read_text()


def test_mixed_outcomes_by_hand():
    """Prompt 0 scores [1, 1] (no signal), 1 scores [0, 1], 2 scores [0.5, 0.5, 0.25]: prompts 1 and 2 remain."""
    from novalign.flywheel.prefs import mixed_outcomes

    rows = [{"index": 0, "scores": [1, 1]}, {"index": 1, "scores": [0, 1]}, {"index": 2, "scores": [0.5, 0.5, 0.25]}]
    assert mixed_outcomes(rows) == [1, 2]
