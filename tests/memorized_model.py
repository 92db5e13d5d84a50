"""A tiny model that answers given chat prompts with given replies, word for word -- for tests that need a real
`novalign serve` to say something meaningful (valid JSON, a rating) instead of random text.

Made with novalign's own tools only: :func:`novalign.models.tiny.init_tiny_model` (what `novalign init-model`
runs) builds a tiny Llama and a byte-level BPE tokenizer, trained here on the pairs' own text so the long prompts
are few tokens (any string is representable: the tokenizer is byte-level); :func:`novalign.train.sft.run_sft`
(`novalign sft`, typed :class:`~novalign.config.SFTConfig`) overfits the pairs; then the local generation path
(:func:`novalign.models.generate.generate_chat`, greedy, batched as the server batches) must reproduce every reply
exactly, or :func:`memorize` raises naming the pair that came out wrong. Nothing is mocked: the server that later
serves the directory runs the same weights through its own engine.

Use the session fixture ``memorized_model`` (registered in conftest.py)::

    def test_x(memorized_model):
        model_dir = memorized_model([([{"role": "user", "content": "2+2?"}], "4")])
        with served(model_dir) as url: ...

The same pairs give the same directory within a test session (cached by the pairs' hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

Pair = tuple[list[dict], str]

# Sized so that a handful of ~150-token pairs is memorized in about a hundred optimizer steps (a few CPU
# seconds); the cosine schedule's decay to 0 settles the weights so greedy decoding is stable. Measured on the
# sysmsg pairs of test_ifdata.py: 40 steps are not enough, 60 at lr 2e-2 are, 80 passed every run seen. 120
# doubles the smallest passing count: another session saw same-seed runs of a borderline case differ (4 pairs,
# 80 steps: passed once, failed once), so the margin is kept wide.
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "max_position_embeddings": 1024, "vocab_size": 2048}
STEPS, LR = 120, 2e-2


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


def memorize(pairs: Sequence[Pair], out_dir: Path, *, steps: int = STEPS, lr: float = LR, seed: int = 0) -> Path:
    """Train ``out_dir/model`` until greedy decoding of every pair's messages gives exactly its reply; returns
    that model directory. ``AssertionError`` (naming the pair, the reply and what came out) if it does not."""
    import torch

    from novalign.config import SFTConfig
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
    cfg = SFTConfig.model_validate({
        "output_dir": str(out_dir / "sft"), "model": {"path": str(base)},
        "data": {"train_files": [str(data)], "max_length": MODEL["max_position_embeddings"]},
        "packing": {"enabled": False},  # one pair per row: every pair in every step (micro batch = all)
        "optim": {"lr": lr, "warmup_ratio": 0.0, "schedule": "cosine", "weight_decay": 0.0},
        "train": {"max_steps": steps, "micro_batch_size": len(pairs), "grad_accum": 1, "seed": seed,
                  "device": "cpu", "progress": False, "tensorboard": False, "save_every": 0, "resume": False,
                  "log_every": 20},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a ~100k-parameter model: more threads only contend on the shared cores
    try:
        run_sft(cfg, console_print=lambda *a, **k: None)
        model_dir = out_dir / "sft" / "model"
        model, tokenizer = load_model(model_dir, dtype="float32"), load_tokenizer(model_dir)
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for _, r in pairs)
        got = generate_chat(model, tokenizer, [list(m) for m, _ in pairs], max_new_tokens=longest + 8,
                            batch_size=len(pairs))  # left-padded together: padding must not change a reply
    finally:
        torch.set_num_threads(threads)
    for i, ((_, want), have) in enumerate(zip(pairs, got)):
        assert have == want, f"memorized model ({steps} steps, lr {lr}): pair {i} gave {have!r}, want {want!r}"
    return model_dir


@pytest.fixture(scope="session")
def memorized_model(tmp_path_factory) -> Callable[[Sequence[Pair]], Path]:
    """``make(pairs, steps=STEPS) -> model directory`` (see :func:`memorize`; more steps for pairs that differ
    only in a short span of a long prompt); cached per pairs and steps within the session."""
    made: dict[str, Path] = {}

    def make(pairs: Sequence[Pair], steps: int = STEPS) -> Path:
        key = _key(pairs) + f"-{steps}"
        if key not in made:
            made[key] = memorize(pairs, tmp_path_factory.mktemp(f"memorized-{key}"), steps=steps)
        return made[key]

    return make
