"""Rollouts for RL: n sampled responses per prompt, behind one interface (report section 2.1).

A :class:`RolloutEngine` turns chat prompts into :class:`Rollout` records -- token ids, text, whether the
response hit the length limit, and the log-probability of every sampled token under the policy that
generated it (PPO's and GRPO's ``old_logps``). Two engines:

* :class:`HFRollout` -- Hugging Face generation with KV cache, batched and left-padded, through
  :func:`novalign.models.generate.generate_batch` (CPU and GPU). Every response row has its own seeded
  generator, so the same seed gives the same rollouts whatever the batch size.
* :class:`VLLMRollout` -- vLLM's offline engine (GPU, optional), with the policy's weights pushed into it
  before each generation (:func:`policy_weight_stream`). Its generation is UNTESTED HERE (no GPU / vLLM in
  CI); written against vLLM's documented API. :func:`make_rollout_engine` picks one from ``rollout.engine``.

Log-probabilities are never taken from the sampler: both engines recompute them with one forward pass of
the policy over prompt + completion (:func:`completion_logprobs`), projecting only completion positions onto
the vocabulary, ``chunk_size`` tokens at a time. That is the same computation the trainer repeats with
gradient, so the PPO ratio is exactly 1 before the first update. The distribution is the policy's softmax
at the sampling temperature (logits / T, as TRL does; T = 0 counts as 1), without the top-k / top-p
truncation, which only decides which tokens can be drawn.

A finished response's ``completion_ids`` end with the end-of-turn token, so the policy is also trained on
*when* to stop; ``text`` does not contain it. A truncated response (``max_new_tokens`` reached without an
end token) has none -- its reward is the trainer's decision (issue 5, "bad input"), the flag says which.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from novalign.data.chat import IGNORE_INDEX
from novalign.llm.types import sample_seeds
from novalign.models.generate import (
    GenerationRequest,
    encode_chat,
    generate_batch,
    stop_token_ids,
)
from novalign.models.forward import chunked_vocab_map, decoder_hidden_states, output_weight
from novalign.models.packing import best_fit_decreasing, collate_packed, collate_padded

__all__ = [
    "HFRollout",
    "Rollout",
    "RolloutEngine",
    "VLLMRollout",
    "completion_hidden",
    "completion_logprobs",
    "completion_tensors",
    "group_by_prompt",
    "label_hidden",
    "make_rollout_engine",
    "policy_weight_stream",
    "token_entropy",
]

Messages = list[dict]


@dataclass
class Rollout:
    """One sampled response. ``logprobs[t]`` is log pi(completion_ids[t] | prompt, completion_ids[:t])."""

    prompt_index: int  # position of its prompt in the generate() call
    sample_index: int  # 0 .. n - 1 within that prompt's group
    prompt_ids: list[int]
    completion_ids: list[int]  # end-of-turn token included when the response finished
    text: str  # decoded completion, special tokens skipped
    truncated: bool  # hit max_new_tokens without an end-of-turn token
    logprobs: list[float]  # one per completion id, under the generating policy


def encode_prompts(tokenizer, prompts: Sequence[Messages], tools: Sequence[list[dict] | None] | None = None) -> list[list[int]]:
    """Each prompt through the chat template, with its tools (``tools[i]`` for ``prompts[i]``) when given."""
    if tools is not None and len(tools) != len(prompts):
        raise ValueError(f"tools: {len(tools)} entries for {len(prompts)} prompts")
    return [encode_chat(tokenizer, p, tools[i] if tools is not None else None) for i, p in enumerate(prompts)]


class RolloutEngine(Protocol):
    """Generation for RL: ``n`` responses to each prompt, returned prompt-major (``prompt_index * n + j``);
    ``tools``, per prompt, its tool definitions for the chat template (:func:`encode_prompts`)."""

    def generate(self, prompts: list[Messages], n: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, seed: int | None = None,
                 first_prompt: int = 0, tools: Sequence[list[dict] | None] | None = None) -> list[Rollout]: ...


def _check_args(prompts: Sequence[Messages], n: int, temperature: float, top_p: float, top_k: int,
                max_new_tokens: int) -> None:
    if not prompts:
        raise ValueError("no prompts to roll out: the prompt batch is empty")
    checks = [(n >= 1, f"n must be >= 1 responses per prompt, got {n}"),
              (temperature >= 0, f"temperature must be >= 0, got {temperature}"),
              (0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
              (top_k >= 0, f"top_k must be >= 0 (0: off), got {top_k}"),
              (max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    return -F.cross_entropy(logits / temperature, labels, reduction="none")


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``-sum_v p_v log p_v`` (nats) of ``softmax(logits)`` over the last dim, fp32, no gradient."""
    with torch.no_grad():
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        return -(logp.exp() * logp).sum(-1)


def _token_logps_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``labels`` (with gradient) and the detached per-position entropy, from one projection."""
    logits = logits / temperature
    return -F.cross_entropy(logits, labels, reduction="none"), token_entropy(logits)


def chunked_logps_entropy(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, temperature: float, chunk_size: int,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logps [N], entropy [N] or None)`` of ``[N, H]`` hidden states, ``chunk_size`` positions per projection
    (:func:`~novalign.models.forward.chunked_vocab_map`: recomputed in the backward pass when trained)."""
    if y.numel() == 0:
        empty = h.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    fn = functools.partial(_token_logps_entropy if with_entropy else _token_logps, temperature=temperature)
    parts = chunked_vocab_map(fn, h, weight, y, chunk_size=chunk_size)
    if not with_entropy:
        return torch.cat(parts), None
    return torch.cat([lp for lp, _ in parts]), torch.cat([e for _, e in parts])


def label_hidden(model: nn.Module, samples: Sequence[tuple[Sequence[int], Sequence[int]]],
                 pack_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h [N, H], y [N])``: the hidden states that predict every labelled token of ``(input_ids, labels)``
    samples (labels aligned with the ids, ``IGNORE_INDEX`` elsewhere, the first one never a target), and those
    labels, in input order (sample by sample, each in token order), from one forward.

    ``pack_tokens > 0``: the samples are packed into rows of that many tokens (best-fit decreasing; a longer
    sample gets a row of its own) with restarted positions and ``cu_seqlens``, as SFT packs; otherwise they
    are right-padded into one batch. Both layouts give the same rows of ``h`` (up to kernel round-off).
    """
    device = next(model.parameters()).device
    if pack_tokens > 0:
        lengths = [len(ids) for ids, _ in samples]
        rows = best_fit_decreasing(lengths, max(pack_tokens, max(lengths)))
        batch = collate_packed(samples, rows, max(sum(lengths[i] for i in row) for row in rows), 0).to(device)
        order = [i for row in rows for i in row]  # row-major: the samples' order in the packed rows
    else:
        batch = collate_padded(samples, 0).to(device)
        order = list(range(len(samples)))
    hidden = decoder_hidden_states(model, batch)  # [B, L, H]
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])  # position t predicts token t + 1
    y = batch.labels[:, 1:].reshape(-1)
    keep = torch.nonzero(y != IGNORE_INDEX, as_tuple=False).flatten()  # row-major: each sample's tokens in order
    h, y = h.index_select(0, keep), y.index_select(0, keep)
    if pack_tokens > 0:  # back to input order: a stable sort on the sample index keeps token order within each
        counts = [sum(1 for t in list(samples[i][1])[1:] if t != IGNORE_INDEX) for i in order]
        slot = torch.cat([torch.full((c,), i, dtype=torch.long) for i, c in zip(order, counts)]) if order else \
            torch.zeros(0, dtype=torch.long)
        perm = torch.sort(slot, stable=True).indices.to(device)
        h, y = h.index_select(0, perm), y.index_select(0, perm)
    return h, y


def completion_hidden(model: nn.Module, sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
                      pack_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h [N, H], y [N])``: the hidden states that predict every completion token of ``(prompt, completion)``
    pairs, and those tokens, in input order, from one forward (:func:`label_hidden`, packed when
    ``pack_tokens > 0``)."""
    if any(len(p) == 0 for p, _ in sequences):
        raise ValueError("completion log-probs need a non-empty prompt for every sequence")
    return label_hidden(model, [(list(p) + list(c), [IGNORE_INDEX] * len(p) + list(c)) for p, c in sequences],
                        pack_tokens)


def completion_logprobs(
    model: nn.Module,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    chunk_size: int = 4096,
    return_entropy: bool = False,
    pack_tokens: int = 0,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token log-probabilities of each completion given its prompt: one ``[len(completion)]`` fp32 tensor each.

    With ``return_entropy``, returns ``(logps, entropies)``: also the (detached) entropy of the policy's
    temperature-scaled distribution at every completion position, from the same projection (no extra forward).

    Sequences are right-padded ``batch_size`` at a time; only completion positions are projected onto the
    vocabulary, ``chunk_size`` positions at a time, so full-vocabulary logits of a whole batch never exist.
    Runs under the caller's grad mode (the rollout calls it under ``no_grad``). With ``pack_tokens > 0`` each
    ``batch_size`` sequences are packed into rows of that token budget instead (see :func:`completion_hidden`).

    Args:
        sequences: ``(prompt_ids, completion_ids)`` pairs; the prompt must be non-empty.
        temperature: the sampling temperature (logits are divided by it; 0 is treated as 1).
    """
    scale = temperature if temperature > 0 else 1.0
    weight = output_weight(model)
    out: list[torch.Tensor] = []
    ents: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        h, y = completion_hidden(model, chunk, pack_tokens)
        flat, ent = chunked_logps_entropy(h, weight, y, scale, chunk_size, return_entropy)
        out.extend(flat.split([len(c) for _, c in chunk]))
        if ent is not None:
            ents.extend(ent.split([len(c) for _, c in chunk]))
    return (out, ents) if return_entropy else out


class HFRollout:
    """:class:`RolloutEngine` on a Hugging Face causal LM (KV cache, batched, left-padded generation).

    Args:
        model: the policy (generation runs in eval mode; the training mode is restored afterwards).
        tokenizer: its tokenizer, with the chat template the prompts are rendered by.
        batch_size: response rows per ``model.generate`` call and per log-prob forward.
        chunk_size: positions per vocabulary projection when computing log-probs.
        pack_tokens: row token budget of the packed log-prob forward, as the trainer's (0: padded).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, batch_size: int = 32, chunk_size: int = 4096,
                 pack_tokens: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.chunk_size, self.pack_tokens = batch_size, chunk_size, pack_tokens
        eos = stop_token_ids(model, tokenizer)
        if not eos:
            raise ValueError("the model has no end-of-turn token (generation_config.eos_token_id / tokenizer.eos_token_id)")
        # generate_batch reports *that* a row ended, not with which end token; with several, the tokenizer's
        # own end-of-turn token is recorded (exact whenever the model has only one).
        self.end_id = tokenizer.eos_token_id if tokenizer.eos_token_id in eos else eos[0]

    @torch.no_grad()
    def generate(self, prompts: list[Messages], n: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, seed: int | None = None,
                 first_prompt: int = 0, tools: Sequence[list[dict] | None] | None = None) -> list[Rollout]:
        """``n`` responses per prompt, prompt-major. Response ``k = i * n + j`` draws with a seed derived from
        ``(seed, first_prompt * n + k)``; pass a different ``seed`` each step for fresh samples (``None``:
        unseeded). ``first_prompt``: the index of ``prompts[0]`` in a larger batch split over ranks, so that a
        rank's share draws exactly the samples one process would draw for those prompts."""
        _check_args(prompts, n, temperature, top_p, top_k, max_new_tokens)
        prompt_ids = encode_prompts(self.tokenizer, prompts, tools)
        seeds = sample_seeds(seed, first_prompt * n, len(prompts) * n)
        rows = [GenerationRequest(prompt_ids[k // n], max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, top_k=top_k, seed=seeds[k]) for k in range(len(prompts) * n)]
        was_training = self.model.training
        try:
            outputs = [o for s in range(0, len(rows), self.batch_size)
                       for o in generate_batch(self.model, self.tokenizer, rows[s : s + self.batch_size])]
            completions = [o.token_ids + ([self.end_id] if o.finish_reason == "stop" else []) for o in outputs]
            logps = completion_logprobs(self.model, [(r.prompt_ids, c) for r, c in zip(rows, completions)],
                                        temperature=temperature, batch_size=self.batch_size, chunk_size=self.chunk_size,
                                        pack_tokens=self.pack_tokens)
        finally:
            self.model.train(was_training)
        return [
            Rollout(k // n, k % n, rows[k].prompt_ids, completions[k], o.text, o.finish_reason == "length", lp.tolist())
            for k, (o, lp) in enumerate(zip(outputs, logps))
        ]


_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def policy_weight_stream(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as ``(name, tensor)`` pairs, one at a time, under the Hugging Face checkpoint names
    an inference engine loads (vLLM's ``model.load_weights(iterable)`` takes exactly this).

    Wrapper prefixes (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``, FSDP / checkpoint wrappers) are
    stripped wherever they occur in a name; tensors are detached (no autograd graph goes to the engine) and
    cast to ``dtype`` when given. A tied output head appears under both its names, as in ``state_dict``.
    """
    for name, tensor in model.state_dict(keep_vars=False).items():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        tensor = tensor.detach()
        yield name, (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)


class VLLMRollout:
    """:class:`RolloutEngine` on vLLM's offline engine, fed the policy's current weights before each call.

    UNTESTED HERE: this machine has neither a GPU nor vLLM; what runs on CPU is tested (the config switch,
    the missing-vLLM error, :func:`policy_weight_stream`). Written against vLLM's documented API --
    ``LLM.generate`` with token-id prompts and one ``SamplingParams`` per prompt; the weights go in through
    the engine model's ``load_weights(iterable of (name, tensor))``: on the in-process driver worker's model
    when it can be reached (run with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocated mode does),
    else through ``LLM.apply_model``, which ships the (materialized) weights to the engine process each step.

    Args:
        model: the HF policy being trained (its weights are pushed; its forward computes the log-probs).
        tokenizer: the policy's tokenizer.
        llm: a ready ``vllm.LLM``; if None, one is built from ``model_path`` and ``engine_args``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, llm: Any = None, model_path: str | None = None,
                 batch_size: int = 32, chunk_size: int = 4096, pack_tokens: int = 0, **engine_args: Any):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError("rollout.engine: vllm needs vLLM (GPU only): pip install vllm (or novalign[vllm]) -- or "
                              "set rollout.engine: hf, which generates with transformers on CPU or GPU") from exc
        if llm is None:
            if model_path is None:
                raise ValueError("VLLMRollout needs a ready vllm.LLM (llm=...) or a model_path to start one")
            llm = vllm.LLM(model=str(model_path), **engine_args)
        self._sampling_params = vllm.SamplingParams
        self.model, self.tokenizer, self.llm = model, tokenizer, llm
        self.batch_size, self.chunk_size, self.pack_tokens = batch_size, chunk_size, pack_tokens

    def _driver_model(self) -> Any:
        """The engine's model when it lives in this process (vLLM V0, or V1 without multiprocessing), else None."""
        executor = getattr(getattr(self.llm, "llm_engine", None), "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        worker = getattr(worker, "worker", worker)  # V1 wraps the worker
        runner = getattr(worker, "model_runner", None)
        return getattr(runner, "model", None)

    def push_weights(self) -> None:
        """Copy the policy's current weights into the engine and drop KV blocks cached under the old ones."""
        engine_model = self._driver_model()
        if engine_model is not None:
            engine_model.load_weights(weights=policy_weight_stream(self.model))
        else:
            weights = [(k, v.cpu()) for k, v in policy_weight_stream(self.model)]  # picklable for the engine process
            self.llm.apply_model(lambda m: m.load_weights(weights=weights))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, prompts: list[Messages], n: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: int = 256, seed: int | None = None,
                 first_prompt: int = 0, tools: Sequence[list[dict] | None] | None = None) -> list[Rollout]:
        _check_args(prompts, n, temperature, top_p, top_k, max_new_tokens)
        self.push_weights()
        prompt_ids = encode_prompts(self.tokenizer, prompts, tools)
        seeds = sample_seeds(seed, first_prompt, len(prompts))
        params = [self._sampling_params(n=n, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1,
                                        max_tokens=max_new_tokens, seed=s) for s in seeds]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        rollouts = []
        for i, out in enumerate(outputs):
            for j, sample in enumerate(out.outputs):
                # vLLM keeps the end-of-turn token in token_ids (not in text), as Rollout wants
                rollouts.append(Rollout(i, j, prompt_ids[i], list(sample.token_ids), sample.text,
                                        sample.finish_reason == "length", []))
        was_training = self.model.training
        self.model.eval()
        try:
            logps = completion_logprobs(self.model, [(r.prompt_ids, r.completion_ids) for r in rollouts],
                                        temperature=temperature, batch_size=self.batch_size, chunk_size=self.chunk_size,
                                        pack_tokens=self.pack_tokens)
        finally:
            self.model.train(was_training)
        for r, lp in zip(rollouts, logps):
            r.logprobs = lp.tolist()
        return rollouts


def make_rollout_engine(rollout_cfg: Any, policy: nn.Module, tokenizer: Any, model_path: str, *, chunk_size: int = 4096,
                        pack_tokens: int = 0) -> HFRollout | VLLMRollout:
    """The engine ``rollout.engine`` names (``hf`` or ``vllm``, with ``rollout.vllm_args``) for a GRPO / PPO run.

    Raises:
        ImportError: ``engine: vllm`` without vLLM installed (the message names the option and the fix).
        ValueError: ``vllm_args`` set with ``engine: hf`` (they would be ignored).
    """
    ro = rollout_cfg
    if ro.engine == "hf":
        if ro.vllm_args:
            raise ValueError("rollout.vllm_args is set but rollout.engine is 'hf': set rollout.engine: vllm or drop them")
        return HFRollout(policy, tokenizer, batch_size=ro.batch_size, chunk_size=chunk_size, pack_tokens=pack_tokens)
    return VLLMRollout(policy, tokenizer, model_path=model_path, batch_size=ro.batch_size, chunk_size=chunk_size,
                       pack_tokens=pack_tokens, **ro.vllm_args)


def group_by_prompt(rollouts: Sequence[Rollout]) -> torch.Tensor:
    """``index [G, n]``: ``rollouts[index[g, j]]`` is sample j of prompt g.

    This is the layout of :func:`novalign.train.rl.group_normalized_advantages`: ``rewards_t[index]`` gives
    the ``[G, n]`` rewards, and ``index.flatten()`` orders per-response rows (KL, mask) as row ``g * n + j``.

    Raises:
        ValueError: prompts numbered with gaps, or groups of different sizes / repeated sample indices.
    """
    if not rollouts:
        raise ValueError("no rollouts to group")
    groups: dict[int, dict[int, int]] = {}
    for pos, r in enumerate(rollouts):
        group = groups.setdefault(r.prompt_index, {})
        if r.sample_index in group:
            raise ValueError(f"prompt {r.prompt_index} has sample {r.sample_index} twice")
        group[r.sample_index] = pos
    if sorted(groups) != list(range(len(groups))):
        raise ValueError(f"prompt indices must be 0 .. {len(groups) - 1}, got {sorted(groups)}")
    n = len(groups[0])
    for g, group in sorted(groups.items()):
        if sorted(group) != list(range(n)):
            raise ValueError(f"every prompt needs samples 0 .. {n - 1}; prompt {g} has {sorted(group)}")
    return torch.tensor([[groups[g][j] for j in range(n)] for g in range(len(groups))], dtype=torch.long)


def completion_tensors(rollouts: Sequence[Rollout], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(completion_ids [S, T] long, logprobs [S, T] fp32, mask [S, T] float)`` of ``rollouts``."""
    width = max((len(r.completion_ids) for r in rollouts), default=0)
    ids = torch.full((len(rollouts), width), pad_id, dtype=torch.long)
    logps = torch.zeros((len(rollouts), width), dtype=torch.float32)
    mask = torch.zeros((len(rollouts), width), dtype=torch.float32)
    for s, r in enumerate(rollouts):
        k = len(r.completion_ids)
        ids[s, :k] = torch.tensor(r.completion_ids, dtype=torch.long)
        logps[s, :k] = torch.tensor(r.logprobs, dtype=torch.float32)
        mask[s, :k] = 1.0
    return ids, logps, mask
