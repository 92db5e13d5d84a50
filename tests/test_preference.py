"""DPO and KTO: the losses by hand, per-sequence log-probs on packed and padded batches, the cached reference,
and short learning runs (`novalign dpo` end to end, KTO in process)."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from novalign.train.losses import dpo_loss, kto_loss


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_dpo_loss_by_hand():
    """Policy log-probs chosen -1.0, rejected -2.0; reference -1.5 for both; beta 0.1.

    Log-ratios: chosen -1.0 - (-1.5) = 0.5, rejected -2.0 - (-1.5) = -0.5, so z = 0.1 * (0.5 + 0.5) = 0.1.
    Plain DPO:  -log sigmoid(0.1) = log(1 + e^-0.1) = log(1.904837) = 0.644397.
    eps = 0.1:  0.9 * 0.644397 + 0.1 * (-log sigmoid(-0.1)) = 0.579957 + 0.1 * log(2.105171) = 0.654397.
    Implicit rewards: 0.1 * 0.5 = 0.05 and 0.1 * -0.5 = -0.05. At the start (policy = reference) z = 0
    and the loss is log 2 = 0.693147 whatever beta.
    """
    pc, pr, ref = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])
    loss, cr, rr = dpo_loss(pc, pr, ref, ref, beta=0.1)
    assert (loss.item(), cr.item(), rr.item()) == pytest.approx((0.644397, 0.05, -0.05), abs=1e-6)
    smooth, _, _ = dpo_loss(pc, pr, ref, ref, beta=0.1, label_smoothing=0.1)
    assert smooth.item() == pytest.approx(0.654397, abs=1e-6)
    start, _, _ = dpo_loss(pc, pr, pc, pr, beta=3.0)
    assert start.item() == pytest.approx(math.log(2), abs=1e-6)


def test_kto_loss_by_hand():
    """Policy log-probs [-1, -3], reference [-2, -2], so r = [1, -1]; sample 0 desirable, 1 undesirable;
    z0 = 0.5, beta = 1, lambda_D = 1, lambda_U = 2.

    desirable:   1 * (1 - sigmoid(1 - 0.5))    = 1 - 0.622459     = 0.377541
    undesirable: 2 * (1 - sigmoid(0.5 - (-1)))  = 2 * (1 - 0.817574) = 0.364851
    """
    losses, rewards = kto_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0]), torch.tensor([True, False]),
                               0.5, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    assert losses.tolist() == pytest.approx([0.377541, 0.364851], abs=1e-6)
    assert rewards.tolist() == [1.0, -1.0]


def test_sequence_logprobs_packed_padded_and_the_cached_reference(tiny_model_dir, tmp_path):
    """Summed response log-probs equal a direct log-softmax gather on each sequence alone, packed or padded;
    the reference computed once (sequences packed on their own) equals the in-training value at step 0,
    so the first DPO loss is exactly log 2."""
    from novalign.data.demo_preference import make_preference_records
    from novalign.data.preference import load_preference_dataset
    from novalign.models import attention
    from novalign.models.load import load_model, load_tokenizer
    from novalign.train.dist import DistInfo
    from novalign.train.pairs import collate_units, reference_logprobs, unit_logprobs
    from novalign.train.preference import DPOObjective
    from novalign.train.rm import pair_units

    tok = load_tokenizer(tiny_model_dir)
    units = pair_units(load_preference_dataset([_jsonl(tmp_path / "p.jsonl", make_preference_records(5, 4))], tok,
                                               max_length=128).pairs)
    model = load_model(tiny_model_dir, attn_implementation=attention.register()).eval()
    pad = tok.pad_token_id

    def direct(ids, labels):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        y = torch.tensor(labels[1:])
        keep = y != -100
        return logits[keep].gather(1, y[keep, None]).sum().item()

    with torch.no_grad():
        expected = torch.tensor([[direct(*units.sequences[s]) for s in m] for m in units.members])
        packed = unit_logprobs(model, collate_units(units, [[0, 1], [2, 3, 4]], packed=True, row_len=600, pad_id=pad), 7)
        padded = unit_logprobs(model, collate_units(units, [0, 1, 2, 3, 4], packed=False, row_len=0, pad_id=pad))
        ref = reference_logprobs(model, units.sequences, packed=True, row_len=128, micro_batch_size=2, pad_id=pad,
                                 info=DistInfo(), device=torch.device("cpu"))
    assert torch.allclose(packed, expected, atol=1e-4) and torch.allclose(padded, expected, atol=1e-4)
    assert torch.allclose(torch.tensor(ref).view(-1, 2), expected, atol=1e-4)
    units.sequence_values["ref_logp"] = ref
    batch = collate_units(units, [[0, 1, 2, 3, 4]], packed=True, row_len=900, pad_id=pad)
    with torch.no_grad():
        loss, metrics = DPOObjective(beta=0.5).loss_sum(model, batch)
    assert loss.item() / 5 == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["logratio"] == pytest.approx(metrics["ref_logratio"], abs=1e-3)


def _env():
    import os

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_dpo_cli_raises_the_held_out_log_ratio_and_caches_the_reference(tiny_model_dir, tmp_path):
    """`novalign dpo` on the synthetic pairs: on held-out pairs the policy's log pi(chosen) - log pi(rejected)
    ends well above the reference's, and a resumed run reads the reference log-probs back."""
    from novalign.data.demo_preference import make_preference_records

    out = tmp_path / "dpo"
    cfg = {
        "output_dir": str(out),
        "model": {"path": str(tiny_model_dir)},
        "data": {"train_files": [str(_jsonl(tmp_path / "t.jsonl", make_preference_records(160, 0)))],
                 "eval_files": [str(_jsonl(tmp_path / "e.jsonl", make_preference_records(40, 1)))],
                 "max_length": 128, "train_eval_pairs": 0},
        "loss": {"beta": 0.1, "label_smoothing": 0.05},
        "packing": {"row_len": 512},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 12, "grad_accum": 1, "save_every": 6, "progress": False, "tensorboard": False},
    }
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(cfg))

    def dpo(*extra):
        cmd = [sys.executable, "-m", "novalign.cli", "dpo", "--config", str(tmp_path / "dpo.yaml"), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    first = dpo()
    assert "reference log-probs computed for" in first
    ev = json.loads((out / "summary.json").read_text())["eval"]
    assert ev["eval_logratio"] > ev["eval_ref_logratio"] + 3.0, ev  # about -19.9 -> -12.8 on this seed
    assert ev["eval_accuracy"] >= 0.9 and ev["eval_loss"] < math.log(2)
    again = dpo("--set", "train.max_steps=14")
    assert "resumed from" in again and "reference log-probs read from" in again


def test_kto_learns_desirable_over_undesirable(tiny_model_dir, tmp_path):
    """KTO on TRL's unpaired format mixed with pairs (each pair gives one desirable and one undesirable
    sample): held-out desirable samples end with a higher implicit reward than undesirable ones."""
    from novalign.config import KTOConfig
    from novalign.data.demo_preference import make_preference_records
    from novalign.data.preference import load_unpaired_dataset
    from novalign.models.load import load_tokenizer
    from novalign.train.preference import run_kto

    def unpaired(records):
        return [{"prompt": r["prompt"], "completion": side, "label": label}
                for r in records for side, label in ((r["chosen"], True), (r["rejected"], False))]

    train = _jsonl(tmp_path / "t.jsonl", unpaired(make_preference_records(60, 0)) + make_preference_records(40, 2))
    held = _jsonl(tmp_path / "e.jsonl", unpaired(make_preference_records(30, 1)))
    tok = load_tokenizer(tiny_model_dir)
    data = load_unpaired_dataset([train], tok, max_length=128)
    assert len(data.samples) == 200 - data.num_duplicates and sum(s.desirable for s in data.samples) <= 100
    cfg = KTOConfig(
        output_dir=str(tmp_path / "kto"),
        model={"path": str(tiny_model_dir)},
        data={"train_files": [str(train)], "eval_files": [str(held)], "max_length": 128, "train_eval_pairs": 0},
        loss={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
        packing={"row_len": 512},
        optim={"lr": 1e-3, "warmup_ratio": 0.0},
        train={"max_steps": 10, "grad_accum": 1, "progress": False, "tensorboard": False},
    )
    result = run_kto(cfg, console_print=lambda *_: None)
    ev = result.eval_metrics
    assert ev["eval_desirable_reward"] > ev["eval_undesirable_reward"] + 0.15, ev  # about 0.02 vs -0.36
    assert ev["eval_kl"] >= 0.0
