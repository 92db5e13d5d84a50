"""Rollouts (novalign.train.rl.rollout) on the tiny model: layout, truncation, log-probs, seeding."""

import dataclasses
import importlib.util

import pytest
import torch

from novalign.models.generate import encode_chat
from novalign.train.rl.rollout import (
    HFRollout,
    Rollout,
    VLLMRollout,
    completion_tensors,
    group_by_prompt,
)

PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tell me a story about a boat please"}]]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The tiny model, edited so that it ends a response with probability ~0.1 per token.

    A random model almost never draws its end token; to see both finished and truncated responses, every
    embedding gets a constant first coordinate (so the normed hidden state's first coordinate is large and
    positive) and the end token's output row reads only that coordinate.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    end = tokenizer.eos_token_id
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[end].zero_()
        model.lm_head.weight[end, 0] = 0.7
    model.train()
    return model, tokenizer


def _reference_logprobs(model, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of the sampled tokens, from one plain unpadded forward of the full model."""
    ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature  # [L, V]
    p = len(rollout.prompt_ids)
    return logits[p - 1 : -1].log_softmax(-1).gather(1, ids[0, p:, None]).squeeze(1)


def test_layout_truncation_and_logprobs(policy):
    model, tokenizer = policy
    engine = HFRollout(model, tokenizer, batch_size=4)
    rollouts = engine.generate(PROMPTS, n=4, temperature=1.3, top_k=1000, top_p=0.99, max_new_tokens=10, seed=3)
    assert model.training  # restored after generation
    assert len(rollouts) == 8
    assert [(r.prompt_index, r.sample_index) for r in rollouts] == [(i, j) for i in range(2) for j in range(4)]
    end = tokenizer.eos_token_id
    kinds = set()
    for r in rollouts:
        assert r.prompt_ids == encode_chat(tokenizer, PROMPTS[r.prompt_index])
        assert 1 <= len(r.completion_ids) <= 10 and len(r.logprobs) == len(r.completion_ids)
        if r.truncated:
            assert len(r.completion_ids) == 10 and end not in r.completion_ids
        else:  # finished: the end token closes the completion, and is not in the text
            assert r.completion_ids[-1] == end and end not in r.completion_ids[:-1]
            assert r.text == tokenizer.decode(r.completion_ids[:-1], skip_special_tokens=True)
        kinds.add(r.truncated)
        torch.testing.assert_close(torch.tensor(r.logprobs), _reference_logprobs(model, r, 1.3), atol=1e-4, rtol=1e-4)
        assert all(lp <= 0 for lp in r.logprobs)
    assert kinds == {True, False}, "the edited model should give both finished and truncated responses"


def test_greedy_logprobs_use_temperature_one(policy):
    model, tokenizer = policy
    rollouts = HFRollout(model, tokenizer).generate(PROMPTS[:1], n=2, temperature=0.0, max_new_tokens=6, seed=0)
    assert rollouts[0].completion_ids == rollouts[1].completion_ids  # greedy: both samples agree
    torch.testing.assert_close(torch.tensor(rollouts[0].logprobs), _reference_logprobs(model, rollouts[0], 1.0),
                               atol=1e-4, rtol=1e-4)


def test_same_seed_same_rollouts_whatever_the_batch_size(policy):
    model, tokenizer = policy
    kwargs = {"n": 3, "temperature": 1.0, "max_new_tokens": 8}
    a = HFRollout(model, tokenizer, batch_size=6).generate(PROMPTS, seed=11, **kwargs)
    b = HFRollout(model, tokenizer, batch_size=2).generate(PROMPTS, seed=11, **kwargs)
    c = HFRollout(model, tokenizer, batch_size=6).generate(PROMPTS, seed=12, **kwargs)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5, rtol=1e-5)
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]
    assert len({tuple(r.completion_ids) for r in a[:3]}) > 1  # the n samples of one prompt differ


def test_bad_arguments(policy):
    engine = HFRollout(*policy)
    with pytest.raises(ValueError, match="no prompts"):
        engine.generate([], n=3)
    with pytest.raises(ValueError, match="n must be"):
        engine.generate(PROMPTS, n=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(PROMPTS, n=2, max_new_tokens=0)


def _fake(prompt_index, sample_index, length=2):
    return Rollout(prompt_index, sample_index, [1], list(range(3, 3 + length)), "", False, [-1.0] * length)


def test_group_by_prompt_any_order():
    rollouts = [_fake(1, 1), _fake(0, 2), _fake(0, 0), _fake(1, 0), _fake(1, 2), _fake(0, 1)]
    index = group_by_prompt(rollouts)
    assert index.tolist() == [[2, 5, 1], [3, 0, 4]]
    rewards = torch.tensor([10.0, 2.0, 0.0, 3.0, 12.0, 1.0])  # reward of rollouts[k]
    assert rewards[index].tolist() == [[0.0, 1.0, 2.0], [3.0, 10.0, 12.0]]
    with pytest.raises(ValueError, match="twice"):
        group_by_prompt([_fake(0, 0), _fake(0, 0)])
    with pytest.raises(ValueError, match="samples 0 .. 1"):
        group_by_prompt([_fake(0, 0), _fake(0, 1), _fake(1, 0)])
    with pytest.raises(ValueError, match="prompt indices"):
        group_by_prompt([_fake(1, 0)])


def test_completion_tensors_right_padded():
    rollouts = [_fake(0, 0, length=3), _fake(0, 1, length=1)]
    ids, logps, mask = completion_tensors(rollouts, pad_id=0)
    assert ids.tolist() == [[3, 4, 5], [3, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert logps.tolist() == [[-1, -1, -1], [-1, 0, 0]]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_rollout_without_vllm_says_so(policy):
    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMRollout(*policy, model_path="unused")


def test_rollout_is_a_plain_record():
    r = _fake(0, 0)
    assert dataclasses.asdict(r)["logprobs"] == [-1.0, -1.0]


def test_entropy_of_a_uniform_distribution_is_log_v():
    """Equal logits over V tokens: H = -sum (1/V) ln(1/V) = ln V, whatever the (shared) logit value."""
    import math

    from novalign.train.rl.rollout import token_entropy

    for v in (2, 7, 1000):
        h = token_entropy(torch.full((3, v), 4.2))
        assert torch.allclose(h, torch.full((3,), math.log(v)), atol=1e-5)
    # one-hot (a very peaked distribution): entropy ~ 0
    peaked = torch.tensor([[50.0, 0.0, 0.0]])
    assert float(token_entropy(peaked)) < 1e-6


def test_completion_entropy_comes_from_the_same_forward(policy):
    """Entropy alongside the log-probs: one value per completion token, equal to a plain forward's, chunking aside."""
    from novalign.train.rl.rollout import completion_logprobs

    model, tokenizer = policy
    rollouts = HFRollout(model, tokenizer, batch_size=4).generate(PROMPTS, n=2, temperature=0.7, max_new_tokens=6, seed=3)
    seqs = [(r.prompt_ids, r.completion_ids) for r in rollouts]
    with torch.no_grad():
        logps, ents = completion_logprobs(model, seqs, temperature=0.7, batch_size=3, chunk_size=2, return_entropy=True)
        plain = completion_logprobs(model, seqs, temperature=0.7, batch_size=3, chunk_size=2)
    for r, lp, e, p in zip(rollouts, logps, ents, plain):
        assert lp.shape == e.shape == (len(r.completion_ids),)
        assert torch.allclose(lp, p)
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float() / 0.7
        q = logits[len(r.prompt_ids) - 1 : -1].log_softmax(-1)
        assert torch.allclose(e, -(q.exp() * q).sum(-1), atol=1e-4)


@pytest.mark.parametrize("backend", ["varlen", "sdpa"])
def test_packed_logprobs_equal_padded(policy, backend):
    """The training forward on packed rows (positions restart, cu_seqlens) gives the padded forward's log-probs
    and entropies, in input order, whatever the row budget -- on the varlen backend and on transformers' sdpa."""
    from novalign.models.attention import register
    from novalign.train.rl.rollout import completion_logprobs

    model, tokenizer = policy
    rollouts = HFRollout(model, tokenizer, batch_size=6).generate(PROMPTS, n=3, temperature=0.8, max_new_tokens=7, seed=5)
    seqs = [(r.prompt_ids, r.completion_ids) for r in rollouts]
    before = model.config._attn_implementation
    model.set_attn_implementation(register() if backend == "varlen" else "sdpa")
    try:
        with torch.no_grad():
            padded, pad_ent = completion_logprobs(model, seqs, temperature=0.8, batch_size=6, return_entropy=True)
            for budget in (1, 40, 4096):  # 1: a row per sequence; 4096: all in one row
                packed, pack_ent = completion_logprobs(model, seqs, temperature=0.8, batch_size=6, chunk_size=3,
                                                       return_entropy=True, pack_tokens=budget)
                for a, b, ea, eb in zip(padded, packed, pad_ent, pack_ent):
                    assert a.shape == b.shape
                    assert torch.allclose(a, b, atol=1e-5), (budget, (a - b).abs().max())
                    assert torch.allclose(ea, eb, atol=1e-5)
    finally:
        model.set_attn_implementation(before)


def test_ppo_packed_logps_and_values_equal_padded(policy):
    from novalign.train.ppo import ActorCritic, logps_and_values

    model, tokenizer = policy
    rollouts = HFRollout(model, tokenizer, batch_size=6).generate(PROMPTS, n=2, max_new_tokens=5, seed=1)
    seqs = [(r.prompt_ids, r.completion_ids) for r in rollouts]
    actor = ActorCritic(model)
    with torch.no_grad():
        actor.value_head.weight.normal_()
        padded = logps_and_values(actor, seqs, return_entropy=True)
        packed = logps_and_values(actor, seqs, return_entropy=True, pack_tokens=30)
    for a, b in zip(padded, packed):
        assert torch.allclose(a, b, atol=1e-5)
