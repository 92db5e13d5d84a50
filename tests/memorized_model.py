"""A tiny model that answers given chat prompts with given replies, word for word -- for tests that need a real
`novalign serve` to say something meaningful (valid JSON, a rating) instead of random text.

Made with novalign's own tools only: :func:`novalign.models.tiny.init_tiny_model` (what `novalign init-model`
runs) builds a tiny Llama and a byte-level BPE tokenizer, trained here on the pairs' own text so the long prompts
are few tokens (any string is representable: the tokenizer is byte-level); :func:`novalign.train.sft.run_sft`
(`novalign sft`, typed :class:`~novalign.config.SFTConfig`) overfits the pairs in rounds, each round resuming the
last one's checkpoint (weights and Adam state, so the rounds are one continuous run). After each round every
reply is checked token by token under teacher forcing: the reply's token must beat every other token's logit by
:data:`MARGIN`, up to and including the end-of-turn token. A reply that is merely the argmax can flip when the
server batches it with other rows (a different matmul shape rounds differently) or when the pairs' text changes
a little; a margin of one logit is far above such noise. Training stops at the first round where every pair
has the margin and the local generation path (:func:`novalign.models.generate.generate_chat`, greedy,
left-padded together as the server batches) reproduces every reply exactly; at :data:`MAX_STEPS` without that,
:func:`memorize` raises naming the pair that is furthest off. Nothing is mocked: the server that later serves
the directory runs the same weights through its own engine.

Use the session fixture ``memorized_model`` (registered in conftest.py)::

    def test_x(memorized_model):
        model_dir = memorized_model([([{"role": "user", "content": "2+2?"}], "4")])
        with served(model_dir) as url: ...

The same pairs give the same directory within a test session (cached by the pairs' hash). Training is
bit-for-bit reproducible: the BPE tokenizer, the initial weights and the trained weights had the same hashes
in separate processes, under pytest and outside it, and with TOKENIZERS_PARALLELISM on or off.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

Pair = tuple[list[dict], str]

# Measured (6 labeling prompts of ~135 tokens that differ only in the prompt labeled; 5 sysmsg pairs of
# test_ifdata.py): Adam at a constant 1e-2, one continuous run, gives the labeling pairs a smallest margin of
# 1.5 after 120 steps and 6.5 after 160, the sysmsg pairs 7.4 after 80. A cosine schedule to 0 at 2e-2 (the
# earlier one-shot setting) ended the labeling pairs at margins of -0.02 to 0.9 (borderline: exact or not by
# a hair), and a constant 2e-2 diverged. Fresh Adam state each round (restarting from the saved weights only)
# lost half the margin at each restart, hence the resumed checkpoint.
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "max_position_embeddings": 1024, "vocab_size": 2048}
ROUND_STEPS, MAX_STEPS, LR, MARGIN = 40, 400, 1e-2, 1.0


def _key(pairs: Sequence[Pair]) -> str:
    return hashlib.sha256(json.dumps([[m, r] for m, r in pairs], sort_keys=True).encode()).hexdigest()[:16]


def _check_pairs(pairs: Sequence[Pair]) -> None:
    if not pairs:
        raise ValueError("memorize: no (messages, reply) pairs given")
    for i, (messages, reply) in enumerate(pairs):
        if not messages or messages[-1].get("role") != "user":
            raise ValueError(f"memorize: pair {i}: the messages must end with a user turn")
        if not isinstance(reply, str) or reply != reply.strip() or not reply:
            raise ValueError(f"memorize: pair {i}: the reply must be a non-empty string without outer whitespace "
                             "(replies are compared after the generation path strips them)")


def reply_margins(model, tokenizer, pairs: Sequence[Pair]) -> list[float]:
    """Per pair, the smallest logit gap ``logit(reply token) - max(logit of any other token)`` over the reply's
    tokens as SFT trained them (teacher forcing, one unpadded row), up to and including the end-of-turn token.
    Positive everywhere means greedy decoding says exactly the reply and stops."""
    import torch

    from novalign.data.chat import IGNORE_INDEX, tokenize_conversation

    out = []
    for messages, reply in pairs:
        s = tokenize_conversation(tokenizer, list(messages) + [{"role": "assistant", "content": reply}],
                                  max_length=MODEL["max_position_embeddings"])
        with torch.no_grad():
            logits = model(torch.tensor([s.input_ids])).logits[0].float()
        gaps = []
        for pos in (p for p, lab in enumerate(s.labels) if lab != IGNORE_INDEX):
            row, tok = logits[pos - 1].clone(), s.input_ids[pos]  # the logits at pos-1 predict token pos
            want = row[tok].item()
            row[tok] = float("-inf")
            gaps.append(want - row.max().item())
            if tok == tokenizer.eos_token_id:
                break  # generation stops here; later trained tokens (the turn's newline) are never generated
        out.append(min(gaps))
    return out


def _sft_config(pairs: Sequence[Pair], out_dir: Path, base: Path, data: Path, steps: int, lr: float, seed: int):
    from novalign.config import SFTConfig

    return SFTConfig.model_validate({
        "output_dir": str(out_dir / "sft"), "model": {"path": str(base)},
        "data": {"train_files": [str(data)], "max_length": MODEL["max_position_embeddings"]},
        "packing": {"enabled": False},  # one pair per row: every pair in every step (micro batch = all)
        "optim": {"lr": lr, "warmup_ratio": 0.0, "schedule": "constant", "weight_decay": 0.0},
        # resume: each round continues the last one's checkpoint (max_steps may grow on a resume)
        "train": {"max_steps": steps, "micro_batch_size": len(pairs), "grad_accum": 1, "seed": seed,
                  "device": "cpu", "progress": False, "tensorboard": False, "save_every": 0, "resume": True,
                  "keep_last": 1, "log_every": ROUND_STEPS},
    })


def memorize(pairs: Sequence[Pair], out_dir: Path, *, round_steps: int = ROUND_STEPS, max_steps: int = MAX_STEPS,
             lr: float = LR, margin: float = MARGIN, seed: int = 0) -> Path:
    """Train ``out_dir/sft/model`` in rounds of ``round_steps`` until every pair's reply has a teacher-forced
    logit margin of at least ``margin`` and greedy decoding of all pairs (batched) gives exactly their replies;
    returns that model directory. ``AssertionError`` after ``max_steps`` naming the pair with the smallest
    margin, its reply and what greedy decoding gives."""
    import torch

    from novalign.models.generate import generate_chat
    from novalign.models.load import load_model, load_tokenizer
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    _check_pairs(pairs)
    out_dir = Path(out_dir)
    conversations = [list(m) + [{"role": "assistant", "content": r}] for m, r in pairs]
    texts = [m["content"] for c in conversations for m in c] * 2  # BPE keeps merges seen at least twice
    base = init_tiny_model(out_dir / "base", seed=seed, texts=texts, **MODEL)
    data = out_dir / "pairs.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    model_dir = out_dir / "sft" / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a ~100k-parameter model: more threads only contend on the shared cores
    try:
        steps = 0
        while steps < max_steps:
            steps = min(steps + round_steps, max_steps)
            run_sft(_sft_config(pairs, out_dir, base, data, steps, lr, seed), console_print=lambda *a, **k: None)
            model, tokenizer = load_model(model_dir, dtype="float32"), load_tokenizer(model_dir)
            margins, wrong = reply_margins(model, tokenizer, pairs), []
            if min(margins) < margin:
                continue
            got = generate_chat(model, tokenizer, [list(m) for m, _ in pairs], batch_size=len(pairs),
                                max_new_tokens=longest_reply(pairs, tokenizer))  # left-padded together, as served
            wrong = [i for i, ((_, want), have) in enumerate(zip(pairs, got)) if have != want]
            if not wrong:
                return model_dir
        worst = wrong[0] if wrong else min(range(len(pairs)), key=margins.__getitem__)
        [have] = generate_chat(model, tokenizer, [list(pairs[worst][0])],
                               max_new_tokens=longest_reply(pairs, tokenizer))
    finally:
        torch.set_num_threads(threads)
    why = "its batched reply differs" if wrong else f"its logit margin is {margins[worst]:.3f} < {margin}"
    raise AssertionError(f"memorized model ({steps} steps, lr {lr}): pair {worst}: {why}; greedy decoding gives "
                         f"{have!r}, want {pairs[worst][1]!r}")


def longest_reply(pairs: Sequence[Pair], tokenizer) -> int:
    """Enough new tokens for the longest reply and its end token, with room to show what comes out instead."""
    return max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in pairs) + 8


@pytest.fixture(scope="session")
def memorized_model(tmp_path_factory) -> Callable[[Sequence[Pair]], Path]:
    """``make(pairs) -> model directory`` (see :func:`memorize`); cached per pairs within the session."""
    made: dict[str, Path] = {}

    def make(pairs: Sequence[Pair]) -> Path:
        key = _key(pairs)
        if key not in made:
            made[key] = memorize(pairs, tmp_path_factory.mktemp(f"memorized-{key}"))
        return made[key]

    return make
