"""The RL training forwards besides the policy loss -- reference KL and PTX -- on packed rows equal padded ones."""

from contextlib import nullcontext

import pytest
import torch

from novalign.data.chat import IGNORE_INDEX

PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tell me a story about a boat please"}],
           [{"role": "user", "content": "two plus two"}]]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(policy, frozen reference, tokenizer): the reference is the tiny model, the policy a perturbed copy of it
    (so the KL between them is not 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().requires_grad_(False)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref, tokenizer


def _attention(models, backend):
    from novalign.models.attention import register

    name = register() if backend == "varlen" else "sdpa"
    for m in models[:2]:
        m.set_attn_implementation(name)


@pytest.mark.parametrize("backend", ["varlen", "sdpa"])
def test_rollout_kl_packed_equals_padded(models, backend):
    """Per-token top-k KL of 9 rollouts of different lengths: packed rows (budgets 1, 40, 4096) give the padded
    forward's [S, T] KL to 1e-5; it is > 0 on response tokens (policy != reference) and 0 on padding."""
    from novalign.train.rl.loop import rollout_kl
    from novalign.train.rl.rollout import HFRollout, completion_tensors

    policy, ref, tokenizer = models
    _attention(models, backend)
    rollouts = HFRollout(policy, tokenizer, batch_size=9).generate(PROMPTS, n=3, temperature=1.0, max_new_tokens=7, seed=3)
    _, _, mask = completion_tensors(rollouts)
    padded = rollout_kl(policy, ref, rollouts, k=20, batch_size=4, chunk_size=5, autocast=nullcontext, pack_tokens=0)
    assert padded.shape == mask.shape
    assert bool((padded[mask.bool()] > 0).all()) and bool((padded[~mask.bool()] == 0).all())
    for budget in (1, 40, 4096):
        packed = rollout_kl(policy, ref, rollouts, k=20, batch_size=4, chunk_size=5, autocast=nullcontext,
                            pack_tokens=budget)
        assert torch.allclose(packed, padded, atol=1e-5), (budget, (packed - padded).abs().max())


def _sft_samples(tokenizer, count: int = 5):
    """(input_ids, labels) chat samples of different lengths, the labels on the assistant turn only."""
    from novalign.models.generate import encode_chat

    samples = []
    for i in range(count):
        prompt = encode_chat(tokenizer, [{"role": "user", "content": "question " + "x " * (3 * i)}])
        answer = tokenizer("answer " * (i + 1), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        samples.append((prompt + answer, [IGNORE_INDEX] * len(prompt) + answer))
    return samples


def test_label_hidden_packed_equals_padded(models):
    """The hidden states predicting every labelled SFT token, and the labels: the same rows in the same order."""
    from novalign.train.rl.rollout import label_hidden

    policy, _, tokenizer = models
    _attention(models, "varlen")
    samples = _sft_samples(tokenizer)
    with torch.no_grad():
        h0, y0 = label_hidden(policy, samples, 0)
        assert y0.tolist() == [t for _, labels in samples for t in labels[1:] if t != IGNORE_INDEX]
        for budget in (1, 50, 4096):
            h, y = label_hidden(policy, samples, budget)
            assert torch.equal(y, y0) and torch.allclose(h, h0, atol=1e-5), budget


@pytest.mark.parametrize("backend", ["varlen", "sdpa"])
def test_ptx_packed_equals_padded_value_and_gradient(models, tmp_path, backend):
    """ptx_backward on the same SFT micro-batch, packed (train.pack_tokens = 48) and padded (0): the same PTX
    loss (> 0, policy != reference) and the same gradient on every policy parameter, to 1e-5."""
    from rl_helpers import rl_config, write_prompts

    from novalign.train.rl.loop import PTXData, ptx_backward

    policy, ref, tokenizer = models
    _attention(models, backend)
    ptx = PTXData(_sft_samples(tokenizer), micro_batch_size=4, seed=0)
    results = []
    for pack in (0, 48):
        cfg = rl_config("grpo", tmp_path, tmp_path / "run", write_prompts(tmp_path / "p.jsonl"),
                        ptx={"coef": 0.5}, loss={"kl_top_k": 30}, train={"pack_tokens": pack, "loss_chunk_size": 7})
        policy.zero_grad(set_to_none=True)
        value = ptx_backward(policy, ref, ptx, step=1, cfg=cfg, autocast=nullcontext)
        results.append((value, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}))
    (v0, g0), (v1, g1) = results
    assert v0 > 0 and v1 == pytest.approx(v0, rel=1e-5, abs=1e-7)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), (name, (g0[name] - g1[name]).abs().max())
    assert all(p.grad is None for p in ref.parameters())


def test_ptx_step_samples_cover_each_epoch_once():
    """5 samples, 2 per step: 3 steps per epoch (2 + 2 + 1); steps 0-2 use every sample exactly once, steps 3-5
    again (another shuffle), and the same step always gives the same samples."""
    from novalign.train.rl.loop import PTXData

    samples = [([i, i], [IGNORE_INDEX, i]) for i in range(5)]
    ptx = PTXData(samples, micro_batch_size=2, seed=7)
    for epoch in range(2):
        steps = [ptx.step_samples(3 * epoch + k) for k in range(3)]
        assert [len(s) for s in steps] == [2, 2, 1]
        assert sorted(x[0][0] for s in steps for x in s) == [0, 1, 2, 3, 4]
    assert ptx.step_samples(4) == ptx.step_samples(4)
