"""Reward model: equation (1) by hand, score normalization by hand, preference formats and bad input, the
last-token readout on packed and padded batches, and `novalign rm` / `novalign rm score` end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from novalign.config import ScoreConfig, ScoreDimension
from novalign.data.io import DataError
from novalign.data.preference import expand_ranked, load_preference_dataset, split_by_prompt
from novalign.data.scores import ScoreObservation, ScoreProblem, normalize_scores, parse_score
from novalign.train.losses import bt_mse_loss


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------- loss


def test_bt_mse_loss_by_hand():
    """Two pairs.

    Pair 1: r_w = 1.0, r_l = 0.0, targets 0.8 / 0.3, alpha = 0.5.
        BT:  -log sigmoid(1) = log(1 + e^-1) = log(1.367879) = 0.313262
        MSE: (1.0 - 0.8)^2 + (0.0 - 0.3)^2 = 0.04 + 0.09 = 0.13, times alpha 0.5 = 0.065
        loss = 0.378262
    Pair 2: r_w = r_l = 0.0, no scores (targets NaN, alpha 0): loss = log 2 = 0.693147, and the NaN
        targets must not leak into the value or the gradient.
    Typo check: with r_w = 1, r_l = 0 and targets exactly 1 / 0, the MSE term is 0. The report's printed
        (r_w - rhat_l)^2 would add (1 - 0)^2 = 1.
    """
    rc = torch.tensor([1.0, 0.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.0], requires_grad=True)
    nan = float("nan")
    losses = bt_mse_loss(rc, rr, torch.tensor([0.8, nan]), torch.tensor([0.3, nan]), torch.tensor([0.5, 0.0]))
    assert losses.tolist() == pytest.approx([0.378262, 0.693147], abs=1e-6)
    losses.sum().backward()
    assert torch.isfinite(rc.grad).all() and torch.isfinite(rr.grad).all()
    exact = bt_mse_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), 1.0)
    assert exact.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)


# ------------------------------------------------------------------------------------------- scores


def _dims(**weights):
    ranges = {"h": (1, 10), "f": (1, 5)}
    return {k: ScoreDimension(weight=w, range=ranges[k]) for k, w in weights.items()}


@pytest.mark.parametrize(
    "method, expected",
    [
        # h (weight 2) = 2, 4, 6 and f (weight 1) = 5, 3, 1 in one group.
        # minmax: h -> 0, .5, 1;  f -> 1, .5, 0;  (2h + f) / 3 = 1/3, 1/2, 2/3
        ("minmax", [1 / 3, 0.5, 2 / 3]),
        # zscore: mean 4 / 3, population std sqrt(8/3) = 1.632993 for both:
        # h -> -1.224745, 0, 1.224745;  f -> 1.224745, 0, -1.224745;  (2h + f) / 3 = -0.408248, 0, 0.408248
        ("zscore", [-0.408248, 0.0, 0.408248]),
        # range: h over [1, 10] -> 1/9, 3/9, 5/9;  f over [1, 5] -> 1, .5, 0;
        # (2h + f) / 3 = (2/9 + 1)/3 = 0.407407, (6/9 + .5)/3 = 0.388889, (10/9)/3 = 0.370370
        ("range", [0.407407, 0.388889, 0.370370]),
        # none: (2h + f) / 3 = 3, 11/3, 13/3
        ("none", [3.0, 11 / 3, 13 / 3]),
    ],
)
def test_normalization_methods_by_hand(method, expected):
    cfg = ScoreConfig(dimensions=_dims(h=2.0, f=1.0), normalize=method)
    obs = [ScoreObservation({"h": h, "f": f}, "file.jsonl") for h, f in ((2, 5), (4, 3), (6, 1))]
    assert normalize_scores(obs, cfg) == pytest.approx(expected, abs=1e-6)


def test_normalization_groups_by_annotator_or_dataset():
    """Annotator x scores 1 and 3, annotator y scores 7 and 9 (same file).
    Per annotator, minmax: x -> 0, 1; y -> 0, 1. Per dataset (one group, min 1, max 9): 0, .25, .75, 1.
    A group holding one value maps to 0.5."""
    values = [("x", 1), ("x", 3), ("y", 7), ("y", 9)]
    by_annotator = [ScoreObservation({"score": v}, a) for a, v in values]
    by_file = [ScoreObservation({"score": v}, "f.jsonl") for _, v in values]
    assert normalize_scores(by_annotator, ScoreConfig()) == [0.0, 1.0, 0.0, 1.0]
    assert normalize_scores(by_file, ScoreConfig()) == [0.0, 0.25, 0.75, 1.0]
    assert normalize_scores([ScoreObservation({"score": 4.0}, "z")], ScoreConfig()) == [0.5]


def test_parse_score_checks_the_declared_scheme():
    cfg = ScoreConfig(dimensions=_dims(h=1.0, f=1.0))
    assert parse_score({"h": 3, "f": 2}, cfg) == {"h": 3.0, "f": 2.0}
    for raw, field, reason in [
        ({"h": 11, "f": 2}, "h", "score out of declared range"),
        ({"h": 3}, "f", "missing score dimension"),
        ({"h": 3, "f": 2, "x": 1}, "x", "unknown score dimension"),
        ({"h": "good", "f": 2}, "h", "non-numeric score"),
        (5, None, "wrong score type"),
    ]:
        with pytest.raises(ScoreProblem) as info:
            parse_score(raw, cfg)
        assert (info.value.field, info.value.reason) == (field, reason)
    with pytest.raises(ScoreProblem, match=r"outside its declared range \[1, 5\]"):
        parse_score(7, ScoreConfig(range=(1, 5)))


# ------------------------------------------------------------------------------------------- formats


def test_expand_ranked_all_and_adjacent():
    """Ranks [2, 1, 3, 1]: responses 1 and 3 tie for best, 0 is second, 2 is last.
    all: every (better, worse) = (1,0) (1,2) (3,0) (3,2) (0,2); adjacent: level 1 -> 2 -> 3 only."""
    assert expand_ranked([2, 1, 3, 1]) == [(1, 0), (1, 2), (3, 0), (3, 2), (0, 2)]
    assert expand_ranked([2, 1, 3, 1], "adjacent") == [(1, 0), (3, 0), (0, 2)]
    assert expand_ranked([1, 1]) == []


def test_every_format_reads_with_duplicates_removed(tiny_model_dir, tmp_path):
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    user = [{"role": "user", "content": "Name a fruit."}]
    a, b, c = "An apple.", "A stone.", "Ugh. A pear."
    records = [
        {"prompt": "Name a fruit.", "chosen": a, "rejected": b, "chosen_score": 9, "rejected_score": 3},  # text
        {"prompt": user, "chosen": [{"role": "assistant", "content": a}],  # TRL conversational, same pair
         "rejected": [{"role": "assistant", "content": b}]},
        {"chosen": user + [{"role": "assistant", "content": b}], "rejected": user + [{"role": "assistant", "content": c}]},
        {"prompt": user, "responses": [  # a group with ranks; "An apple." listed twice
            {"content": c, "rank": 3}, {"content": a, "rank": 1}, {"content": b, "rank": 2}, {"content": a, "rank": 2}]},
        {"prompt": "Say hi.", "responses": [{"content": "hi", "score": 2}, {"content": "Hello!", "score": 8},
                                            {"content": "go away", "score": 0}]},  # ordered by scores
    ]
    path = _jsonl(tmp_path / "pref.jsonl", records)
    data = load_preference_dataset([path], tok, max_length=128)
    got = [(p.prompt[-1]["content"], p.chosen_message["content"], p.rejected_message["content"]) for p in data.pairs]
    fruit, hi = "Name a fruit.", "Say hi."
    # record 2 repeats record 1; the group gives a>b, a>a, a>c, b>c, a(rank 2)>c of which only the first a>c
    # is new (a vs a is one response listed twice); the scored group is ordered by score: Hello! > hi > go away
    assert got == [(fruit, a, b), (fruit, b, c), (fruit, a, c), (hi, "Hello!", "hi"), (hi, "Hello!", "go away"),
                   (hi, "hi", "go away")]
    assert data.num_duplicates == 5
    adjacent = load_preference_dataset([path], tok, max_length=128, pairs="adjacent")
    assert ("Say hi.", "Hello!", "go away") not in [(p.prompt[-1]["content"], p.chosen_message["content"],
                                                     p.rejected_message["content"]) for p in adjacent.pairs]
    # targets only when the scores feed the loss; the text record has them, the TRL one is a duplicate
    scored = load_preference_dataset([path], tok, max_length=128, use_scores=True)
    # minmax over every score of the file (0, 2, 3, 8, 9): 9 -> 1, 3 -> 1/3
    assert (scored.pairs[0].chosen_target, scored.pairs[0].rejected_target) == pytest.approx((1.0, 1 / 3))
    assert [p.has_targets for p in scored.pairs] == [True, False, False, True, True, True]
    # the response's labels are its own tokens and the sequence ends on the last of them
    s = data.pairs[0].chosen
    assert s.labels[-1] == s.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode([t for t, y in zip(s.input_ids, s.labels) if y != -100]) == a + "<|im_end|>"
    train, held = split_by_prompt(data.pairs, 0.5, seed=0)
    assert {p.prompt[-1]["content"] for p in train}.isdisjoint({p.prompt[-1]["content"] for p in held})


def test_bad_input_is_a_clear_error_or_a_counted_skip(tiny_model_dir, tmp_path):
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    cfg = ScoreConfig(dimensions=_dims(h=1.0, f=1.0))
    good = {"prompt": "q", "chosen": "yes", "rejected": "no", "chosen_score": {"h": 9, "f": 4}, "rejected_score": {"h": 2, "f": 2}}
    bad = [
        ({**good, "rejected": "yes"}, "rejected", "identical to 'chosen'"),
        ({k: v for k, v in good.items() if k != "rejected_score"}, "rejected_score", "missing score"),
        ({**good, "chosen_score": {"h": 12, "f": 4}}, "chosen_score.h", "outside its declared range [1, 10]"),
        ({**good, "rejected_score": {"h": 2}}, "rejected_score.f", "missing score dimension"),
        ({"prompt": "q", "responses": [{"content": "a", "rank": 1}, {"content": "b"}]}, "responses[0].score", "missing score"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "user", "content": "x"}], "rejected": "n"},
         "chosen[0].role", "must be an assistant message"),
        ({"prompt": "q", "answer": "yes"}, None, "unknown preference record"),
    ]
    for i, (record, field, problem) in enumerate(bad):
        path = _jsonl(tmp_path / f"bad{i}.jsonl", [good, record])
        with pytest.raises(DataError) as info:
            load_preference_dataset([path], tok, max_length=64, scores=cfg, use_scores=True)
        err = info.value
        assert (err.line, err.field) == (2, field), str(err)
        assert problem in str(err) and str(err).startswith(f"{path}:2: ")
    everything = _jsonl(tmp_path / "all.jsonl", [good] + [r for r, _, _ in bad])
    data = load_preference_dataset([everything], tok, max_length=64, scores=cfg, use_scores=True, skip_invalid=True)
    assert len(data.pairs) == 1 and data.skipped.total == len(bad)
    assert data.skipped.counts["missing score"] == 2 and data.skipped.counts["chosen identical to rejected"] == 1
    # without the MSE term (alpha = 0, or DPO) a partial score is not needed and not an error
    no_mse = load_preference_dataset([_jsonl(tmp_path / "p.jsonl", [bad[1][0]])], tok, max_length=64, scores=cfg)
    assert len(no_mse.pairs) == 1 and not no_mse.pairs[0].has_targets


# ------------------------------------------------------------------------------------------- the model


def test_reward_read_at_last_token_packed_padded_and_hf(tiny_model_dir, tmp_path):
    """The same pairs collated packed (several sequences per row, cu_seqlens) and padded give the same
    rewards, and they equal Hugging Face's own forward on each sequence alone."""
    from novalign.data.demo_preference import make_preference_records
    from novalign.models import attention
    from novalign.models.load import load_tokenizer
    from novalign.models.reward import load_reward_model, rewards_at
    from novalign.train.pairs import collate_units
    from novalign.train.rm import pair_units

    tok = load_tokenizer(tiny_model_dir)
    path = _jsonl(tmp_path / "p.jsonl", make_preference_records(6, seed=3))
    units = pair_units(load_preference_dataset([path], tok, max_length=128).pairs)
    torch.manual_seed(0)
    model = load_reward_model(tiny_model_dir, attn_implementation=attention.register(), pad_token_id=tok.pad_token_id).eval()
    with torch.no_grad():
        packed = collate_units(units, [[0, 1, 2], [3, 4, 5]], packed=True, row_len=512, pad_id=tok.pad_token_id)
        assert packed.cu_seqlens is not None and packed.input_ids.shape[0] == 2
        padded = collate_units(units, [0, 1, 2, 3, 4, 5], packed=False, row_len=0, pad_id=tok.pad_token_id)
        r_packed = rewards_at(model, packed, packed.extras["last"].reshape(-1)).view(-1, 2)
        r_padded = rewards_at(model, padded, padded.extras["last"].reshape(-1)).view(-1, 2)
        alone = torch.tensor([[model(input_ids=torch.tensor([units.sequences[s][0]])).logits.item() for s in m]
                              for m in units.members])
    assert torch.allclose(r_packed, r_padded, atol=1e-5)
    assert torch.allclose(r_packed, alone, atol=1e-5)


# ------------------------------------------------------------------------------------------- end to end


def _env():
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "novalign.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_rm_cli_learns_the_hidden_rule_and_scores(tiny_model_dir, tmp_path):
    """The synthetic set prefers a polite closing over a plain answer over a rude opener (the hidden rule).
    A short run of the tiny reward model must order held-out pairs by it (>= 0.9 accuracy), log the
    train-vs-eval gap, save a directory that AutoModelForSequenceClassification loads, and `rm score` must
    give the same rewards."""
    from novalign.data.demo_preference import make_preference_records

    train = _jsonl(tmp_path / "train.jsonl", make_preference_records(240, seed=0))
    held = _jsonl(tmp_path / "eval.jsonl", make_preference_records(60, seed=1))
    out = tmp_path / "rm"
    cfg = {
        "output_dir": str(out),
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": [str(train)], "eval_files": [str(held)], "max_length": 128, "train_eval_pairs": 64},
        "scores": {"dimensions": {"helpfulness": {"range": [1, 10]}, "fluency": {"range": [1, 5]},
                                  "safety": {"range": [1, 5]}}, "group_by": "annotator"},
        "loss": {"alpha": 0.5},
        "packing": {"row_len": 384},
        "optim": {"lr": 2e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 24, "grad_accum": 1, "eval_every": 12, "progress": False, "tensorboard": False},
    }
    (tmp_path / "rm.yaml").write_text(yaml.safe_dump(cfg))
    proc = _cli("rm", "--config", tmp_path / "rm.yaml")
    assert "with absolute scores" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["eval_accuracy"] >= 0.9, summary
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "gap_accuracy" in r]
    assert [r["step"] for r in evals] == [12, 24] and all("eval_mse" in r for r in evals)
    assert all("accuracy" in r and "margin" in r for r in records if "loss" in r)

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    prompt = "What is the capital of Veloria?"
    answer = "The capital of Veloria is Marrowick."
    rows = [{"prompt": prompt, "response": f"{answer} Hope this helps!"}, {"prompt": prompt, "response": answer},
            {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"Whatever. {answer}"}]}]
    _cli("rm", "score", out / "model", "--input", _jsonl(tmp_path / "in.jsonl", rows), "--output", tmp_path / "out.jsonl")
    scored = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in scored]
    assert [r["prompt"] for r in scored[:2]] == [prompt, prompt] and rewards[0] > rewards[1] > rewards[2]
    from novalign.models.load import load_tokenizer

    tok = load_tokenizer(out / "model")
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False)
    ids = tok(ids.rstrip(), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.item() == pytest.approx(rewards[1], abs=1e-4)
    # bad input through the CLI: file, line and field; exit code 2
    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    proc = _cli("rm", "--config", tmp_path / "rm.yaml", "--set", f"data.train_files=[{bad}]", "--set",
                f"output_dir={tmp_path / 'bad'}", check=False)
    assert proc.returncode == 2 and "bad.jsonl:1: field 'rejected': identical to 'chosen'" in proc.stderr
