"""Batched chat generation with a local Hugging Face model (left-padded, one ``model.generate`` per batch).

Two entry points:

* :func:`generate_chat` -- conversations in, reply strings out. The small path used by ``novalign generate``.
* :func:`generate_batch` -- token-id prompts in, :class:`GenerationOutput` (text, token count, finish reason)
  out. Every row carries its *own* sampling parameters (temperature, top-p, top-k, seed, stop strings,
  max new tokens) and may stream its tokens through a callback, so requests from different users can share
  one batch. The LLM access layer (``novalign.llm.local``, ``novalign serve``) is built on it.

How rows with different parameters share one ``model.generate``: generation runs greedy, and
:class:`RowSampler` (a logits processor) picks each row's next token itself -- argmax for temperature 0,
otherwise a draw from that row's tempered, top-k/top-p filtered distribution with that row's own
``torch.Generator`` -- and leaves only the chosen token finite. A seeded row therefore draws the same
tokens whatever else is in its batch. :class:`RowStopper` (a stopping criterion) ends each row at its own
``max_new_tokens`` or stop string and feeds the streaming callbacks.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

__all__ = ["GenerationRequest", "GenerationOutput", "encode_chat", "generate_batch", "generate_chat", "generate_texts"]

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class GenerationRequest:
    """One row of a batch: a prompt and how to continue it.

    ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` switch those filters off. Without a
    ``seed`` the row draws from a fresh random seed. ``on_token`` is called (from the generating thread)
    with every token id the row produces, end-of-turn excluded (``tokens_streamed`` counts those calls).
    Setting ``cancel`` ends the row at the next step (its caller is gone), with finish reason "cancelled".
    """

    prompt_ids: list[int]
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    on_token: Callable[[int], None] | None = None
    cancel: threading.Event | None = None
    tokens_streamed: int = 0


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = len(self.token_ids)


def encode_chat(tokenizer, messages: list[dict], tools: Sequence[dict] | None = None) -> list[int]:
    """Token ids of ``messages`` rendered by the model's chat template, ending with the assistant prompt; with
    ``tools`` (OpenAI function definitions) given to the template as in training (:mod:`novalign.data.tools`).

    Raises:
        ToolsNotRendered: ``tools`` given, but the template renders the prompt the same without them (the
            model would be asked to call tools it is never shown).
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         **({"tools": list(tools)} if tools else {}))
    if tools and text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False):
        from novalign.data.chat import ToolsNotRendered

        raise ToolsNotRendered("the chat template renders the prompt the same with and without `tools`, so the "
                               "tool definitions would be dropped; use a template that shows tools")
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is not None:
            ids.update(source if isinstance(source, (list, tuple)) else [source])
    return sorted(ids)


# From this vocabulary size on, rows without top-k/top-p skip the full sort (:func:`draw_untruncated`): sorting
# 151,936 logits of 16 rows took 0.8 s a step on one loaded CPU core, the topk path 0.03 s (bench/cpu_hotspots.py). Below it the sorted path stays, so the draws of
# small models (tests, the demo) stay those of earlier runs bit for bit. On a large vocabulary the two paths
# differ where the sorted one is off: its float32 running sum over 152k tokens drifts by ~2e-5, and with
# top_p = 1 its "mass before >= top_p" test then drops every token after the drifted sum passes 1.0 (about
# half of the vocabulary for peaked logits, ~3e-5 of the mass); the sort-free path sums in float64 and draws
# the token an exact float64 inverse CDF draws (bench/cpu_hotspots.py counts both against it).
SORT_FREE_MIN_VOCAB = 32768


class RowSampler(LogitsProcessor):
    """Choose every row's next token with that row's own parameters and generator (see module docstring)."""

    def __init__(self, rows: Sequence[GenerationRequest]):
        self.temperature = torch.tensor([r.temperature for r in rows], dtype=torch.float32)
        self.top_p = torch.tensor([r.top_p for r in rows], dtype=torch.float32)
        self.top_k = torch.tensor([r.top_k for r in rows], dtype=torch.long)
        self.sampled = self.temperature > 0
        self.generators = []
        for r in rows:
            g = torch.Generator()
            g.manual_seed(r.seed if r.seed is not None else random.SystemRandom().randrange(2**63))
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float()  # (B, V)
        chosen = logits.argmax(dim=-1)  # (B,)
        if self.sampled.any():
            rows = self.sampled.nonzero().squeeze(1)
            chosen[rows.to(chosen.device)] = self._sample(logits[rows.to(logits.device)], rows)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out

    def _sample(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Draw one token per row of ``logits`` (R, V) by inverse-CDF sampling with per-row uniforms, the CDF
        running over tokens from the most to the least likely."""
        device = logits.device
        logits = logits / self.temperature[rows].unsqueeze(1).to(device)
        u = torch.stack([torch.rand((), generator=self.generators[i]) for i in rows.tolist()]).to(device)
        top_k, top_p = self.top_k[rows].to(device), self.top_p[rows].to(device)
        truncated = (top_k > 0) | (top_p < 1)
        if logits.shape[-1] < SORT_FREE_MIN_VOCAB:  # the sort is cheap here: keep earlier runs' draws bit for bit
            truncated = torch.ones_like(truncated)
        elif not truncated.any():  # the common case (RL rollouts): no filter, no full sort
            return draw_untruncated(logits.softmax(dim=-1), u)
        out = torch.empty(logits.shape[0], dtype=torch.long, device=device)
        if (~truncated).any():
            out[~truncated] = draw_untruncated(logits[~truncated].softmax(dim=-1), u[~truncated])
        t = truncated
        out[t] = _draw_filtered(logits[t], top_k[t], top_p[t], u[t])
        return out


def _draw_filtered(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p (Holtzman et al. 2020) filtered inverse-CDF draw: needs the whole sorted vocabulary."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (R, V)
    rank = torch.arange(logits.shape[-1], device=logits.device).unsqueeze(0)
    k = top_k.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill((k > 0) & (rank >= k), float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly better tokens
    probs = probs.masked_fill(mass_before >= top_p.unsqueeze(1), 0.0)  # keeps rank 0
    cdf = probs.cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1).contiguous()).clamp_max(logits.shape[-1] - 1)
    return order.gather(1, pick).squeeze(1)


def draw_untruncated(probs: torch.Tensor, u: torch.Tensor, first_k: int = 64) -> torch.Tensor:
    """The token where the descending-order CDF of ``probs`` (R, V) first reaches ``u * total``, without
    sorting the vocabulary: the ``k`` most likely tokens (``topk``, k = 64, 1024, ... then V) are enough
    as soon as their mass reaches the target, which for a trained model's peaked distribution is almost
    always at the first ``k``; a flat row ends in a full sort, as before.

    By hand, probs [[0.1, 0.6, 0.3]], u 0.8: descending 0.6 (token 1), 0.3 (token 2), 0.1 (token 0), CDF
    0.6, 0.9, 1.0; target 0.8 -> token 2.
    """
    # float64 running sums: a float32 one over 152k tokens drifts by ~2e-5, which moves draws in the tail
    total = probs.sum(dim=-1, dtype=torch.float64)
    target = u.to(torch.float64) * total
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    vocab, k = probs.shape[-1], min(first_k, probs.shape[-1])
    while pending.numel():
        vals, idx = probs[pending].topk(k, dim=-1)  # sorted, most likely first
        cdf = vals.cumsum(dim=-1, dtype=torch.float64)
        done = (cdf[:, -1] >= target[pending]) | (k == vocab)
        pick = torch.searchsorted(cdf[done], target[pending][done].unsqueeze(1).contiguous()).clamp_max(k - 1)
        out[pending[done]] = idx[done].gather(1, pick).squeeze(1)
        pending, k = pending[~done], (min(k * 16, vocab) if k * 16 < vocab // 4 else vocab)  # then the full sort
    return out


class RowStopper(StoppingCriteria):
    """Per-row stopping (end-of-turn, own ``max_new_tokens``, stop strings) and token streaming."""

    def __init__(self, rows: Sequence[GenerationRequest], prompt_width: int, eos_ids: list[int], tokenizer):
        self.rows, self.width, self.eos, self.tokenizer = rows, prompt_width, set(eos_ids), tokenizer
        self.length = [None] * len(rows)  # generated tokens kept, once a row is done
        self.reason: list[FinishReason | None] = [None] * len(rows)
        self.stop_window = [max((len(s) for s in r.stop), default=0) + 8 for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        steps = input_ids.shape[1] - self.width
        new_tokens = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if self.reason[i] is not None:
                continue
            if new_tokens[i] in self.eos:
                self.length[i], self.reason[i] = steps - 1, "stop"
                continue
            if row.cancel is not None and row.cancel.is_set():  # nobody waits for this row any more
                self.length[i], self.reason[i] = steps, "cancelled"
                continue
            if row.on_token is not None:
                row.tokens_streamed += 1
                row.on_token(new_tokens[i])
            if row.stop:
                tail = self.tokenizer.decode(input_ids[i, max(self.width, input_ids.shape[1] - self.stop_window[i]):])
                if any(s in tail for s in row.stop):
                    self.length[i], self.reason[i] = steps, "stop"
                    continue
            if steps >= row.max_new_tokens:
                self.length[i], self.reason[i] = steps, "length"
        done = [r is not None for r in self.reason]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_batch(model, tokenizer, rows: Sequence[GenerationRequest]) -> list[GenerationOutput]:
    """Generate all ``rows`` in one left-padded ``model.generate`` call (the caller chooses the batch)."""
    if not rows:
        return []
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = stop_token_ids(model, tokenizer)
    width = max(len(r.prompt_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding, so every row ends where generation starts
        input_ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, dtype=torch.long)
        mask[i, width - len(r.prompt_ids) :] = 1
    stopper = RowStopper(rows, width, eos_ids, tokenizer)
    # Sampling parameters come only from the rows: a fresh config, not the checkpoint's generation_config.
    config = GenerationConfig(
        max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=False, pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )
    out = model.generate(
        input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config,
        logits_processor=LogitsProcessorList([RowSampler(rows)]), stopping_criteria=StoppingCriteriaList([stopper]),
    )
    results = []
    for i, r in enumerate(rows):
        generated = out[i, width:].tolist()
        if stopper.reason[i] is None:  # generate() ran out of max_new_tokens before the stopper saw the row end
            cut = next((j for j, t in enumerate(generated) if t in stopper.eos), None)
            stopper.length[i], stopper.reason[i] = (cut, "stop") if cut is not None else (len(generated), "length")
        ids = generated[: stopper.length[i]][: r.max_new_tokens]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        reason: FinishReason = stopper.reason[i]
        hits = [text.find(s) for s in r.stop if s in text]
        if hits:
            text, reason = text[: min(hits)], "stop"
        results.append(GenerationOutput(text=text, token_ids=ids, finish_reason=reason, prompt_tokens=len(r.prompt_ids)))
    return results


def generate_chat(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    tools: Sequence[Sequence[dict] | None] | None = None,
) -> list[str]:
    """Answer each conversation (the model writes the next assistant turn); returns the decoded replies.
    ``tools``: per conversation, its tool definitions (or None), shown by the chat template."""
    if tools is not None and len(tools) != len(conversations):
        raise ValueError(f"tools: {len(tools)} entries for {len(conversations)} conversations")
    replies: list[str] = []
    for start in range(0, len(conversations), batch_size):
        rows = [
            GenerationRequest(encode_chat(tokenizer, c, tools[start + k] if tools is not None else None),
                              max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
            for k, c in enumerate(conversations[start : start + batch_size])
        ]
        replies.extend(o.text.strip() for o in generate_batch(model, tokenizer, rows))
    return replies


def generate_texts(model, tokenizer, prompts: Sequence[list[int]], *, max_new_tokens: int, temperature: float = 0.0,
                   stop: Sequence[str] = (), batch_size: int = 32, seed: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Generate one reply per prompt, batching prompts of similar length; replies in input order.

    With ``temperature > 0`` row ``i`` draws with seed ``seed + i`` (reproducible whatever the batching).
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        rows = [GenerationRequest(list(prompts[i]), max_new_tokens=max_new_tokens, temperature=temperature,
                                  seed=None if seed is None else seed + i, stop=tuple(stop)) for i in idx]
        for i, out in zip(idx, generate_batch(model, tokenizer, rows)):
            replies[i] = out.text.strip()
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return replies
# ------------------------------------------------------------------ `novalign generate`: a quick check after SFT


def conversations_from_file(path, limit: int = 0) -> tuple[list[list[dict]], list[str | None], list[list[dict] | None]]:
    """The conversations to answer in a chat JSONL/Parquet file -- each record's messages minus a final assistant
    turn -- each record's ``answer`` (None without one) and its checked ``tools`` (None without); the first
    ``limit`` records only when ``limit > 0``.

    Raises:
        DataError: a record that is not a chat, or has bad tools (file, line and field named).
    """
    from novalign.data.chat import normalize_messages
    from novalign.data.io import iter_records
    from novalign.data.tools import check_tool_calls, normalize_tools

    convs: list[list[dict]] = []
    answers: list[str | None] = []
    tools: list[list[dict] | None] = []
    for line, record in iter_records(path):
        messages = normalize_messages(record, path=str(path), line=line)
        tools.append(normalize_tools(record.get("tools"), path=str(path), line=line))
        check_tool_calls(messages, tools[-1], path=str(path), line=line)
        convs.append(messages[:-1] if messages[-1]["role"] == "assistant" else messages)
        answers.append(record.get("answer"))
        if limit and len(convs) >= limit:
            break  # before the next line is read: a bad line after the limit is never seen
    return convs, answers, tools


def answer_rows(conversations: Sequence[list[dict]], replies: Sequence[str],
                answers: Sequence[str | None]) -> list[dict]:
    """``{prompt, reply}`` per conversation (the prompt is its last message), plus ``answer`` and ``correct`` where
    an answer is given: whether the reply contains it, case-insensitively -- a loose check that SFT taught the
    facts, not a grader (``novalign eval`` is)."""
    rows = []
    for conv, reply, answer in zip(conversations, replies, answers):
        row = {"prompt": conv[-1]["content"], "reply": reply}
        if answer is not None:
            row.update(answer=answer, correct=answer.strip().lower() in reply.lower())
        rows.append(row)
    return rows
