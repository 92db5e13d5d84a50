"""The tiny-LM prompt scorer: the report's Quality-7B (section 3.1.3: Baichuan2-7B fine-tuned on the anchored
pairwise labels, then scoring prompts without an LLM judge) with our own tiny causal LM in its place.

* :func:`level_rows`: each judged prompt gives one chat sample, ``Rate this prompt's clarity, practicality,
  complexity and novelty from 0 to 9.`` + the prompt -> four digits on four lines, each judged score mapped
  linearly from the training range onto 0..9 (:func:`to_level`); one sample per prompt, not one per
  dimension, so the prompt's tokens are trained once (a quarter of the compute on a CPU);
* :func:`train_lm_scorer`: :func:`novalign.models.tiny.init_tiny_model` (a byte-level BPE trained on the
  prompts, a tiny Llama) and :func:`novalign.train.sft.run_sft` on those rows; the result is a normal model
  folder (``novalign serve`` can serve it) with ``quality_scorer.json`` beside the weights (the dimensions,
  the instruction, the score ranges);
* :func:`lm_scores` / :func:`lm_overall`: per dimension, the softmax over the ten digit tokens at that
  digit's position of the reply (the earlier digits fed as decoded greedily), the expected level mapped back
  to the score range -- a continuous score (the greedy digits alone give ten values and many ties).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from novalign.flywheel.quality import DIMENSIONS

__all__ = ["INSTRUCTION", "MODEL", "to_level", "level_rows", "train_lm_scorer", "lm_scores", "lm_overall",
           "judge_rows", "train_lm_judge"]

INSTRUCTION = "Rate this prompt's clarity, practicality, complexity and novelty from 0 to 9.\n\n{prompt}"
DIGITS = "0123456789"
SPEC = "quality_scorer.json"
# About 200k parameters (most in the 1024-token embedding): a thousand prompts x 300 steps is minutes on a shared CPU
# core. A 96-wide, 3-layer model with a 2048 vocabulary was measured 0.815 on the bench's held-out pairs after
# 150 steps, at three times the compute per token.
MODEL = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128,
         "max_position_embeddings": 1024, "vocab_size": 1024}


def to_level(score: float, lo: float, hi: float) -> int:
    """``score`` in ``[lo, hi]`` onto 0..9, rounded, clipped. Example: lo -1, hi 1: -1 -> 0, 0 -> round(4.5)
    = 4 (round half to even), 1 -> 9, 2 -> 9 (clipped); lo == hi -> 0."""
    if hi <= lo:
        return 0
    return int(min(9, max(0, round(9 * (score - lo) / (hi - lo)))))


def level_rows(texts: Sequence[str], scores: Sequence[Mapping[str, float]],
               ranges: Mapping[str, tuple[float, float]]) -> list[list[dict]]:
    """One conversation per prompt: the instruction and the prompt, answered by the four levels, one a line
    (clarity, practicality, complexity, novelty)."""
    return [[{"role": "user", "content": INSTRUCTION.format(prompt=t)},
             {"role": "assistant", "content": "\n".join(str(to_level(s[d], *ranges[d])) for d in DIMENSIONS)}]
            for t, s in zip(texts, scores, strict=True)]


def _single_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise RuntimeError(f"tiny-LM scorer: the tokenizer does not keep {text!r} one token: {ids}")
    return ids[0]


def _check_reply_tokens(tokenizer) -> None:
    """The reply must tokenize as digit, newline, digit, ... right after the generation prompt, as
    :func:`lm_scores` reads it (a BPE merge across them would move the positions)."""
    from novalign.models.generate import encode_chat

    msgs = [{"role": "user", "content": INSTRUCTION.format(prompt="x")}]
    prefix = encode_chat(tokenizer, msgs)
    full = tokenizer(tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": "7\n0\n9\n3"}],
                                                   tokenize=False), add_special_tokens=False)["input_ids"]
    nl = _single_id(tokenizer, "\n")
    want = prefix + [_single_id(tokenizer, "7"), nl, _single_id(tokenizer, "0"), nl, _single_id(tokenizer, "9"), nl,
                     _single_id(tokenizer, "3")]
    if full[: len(want)] != want:
        raise RuntimeError("tiny-LM scorer: the chat template does not put the reply's digits and newlines as "
                           "single tokens right after the generation prompt")


def _finetune(rows: Sequence[list[dict]], corpus: Sequence[str], out_dir: Path, *, steps: int, lr: float,
              batch_size: int, seed: int, model: Mapping[str, int] | None, threads: int | None,
              check: Any = None) -> tuple[Path, Any]:
    """A fresh tiny LM (:func:`~novalign.models.tiny.init_tiny_model`, its BPE trained on ``corpus``) fine-tuned
    by :func:`~novalign.train.sft.run_sft` on the chat ``rows``; ``out_dir`` (replaced) gets the model folder."""
    import torch

    from novalign.config import SFTConfig
    from novalign.models.load import load_tokenizer
    from novalign.models.tiny import init_tiny_model
    from novalign.train.sft import run_sft

    arch = {**MODEL, **(model or {})}
    with tempfile.TemporaryDirectory(prefix="novalign-quality-lm-") as tmp:
        base = init_tiny_model(Path(tmp) / "base", seed=seed, texts=list(corpus) * 2, **arch)  # merges seen twice
        if check is not None:
            check(load_tokenizer(base))
        if steps == 0:  # the untrained baseline: the initialised model as it is
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(base, out_dir)
            return out_dir, None
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
        cfg = SFTConfig.model_validate({
            "output_dir": str(Path(tmp) / "sft"), "model": {"path": str(base)},
            "data": {"train_files": [str(data)], "max_length": arch["max_position_embeddings"]},
            "packing": {"enabled": False},
            "optim": {"lr": lr, "warmup_ratio": 0.05, "schedule": "cosine", "weight_decay": 0.01},
            "train": {"max_steps": steps, "micro_batch_size": batch_size, "grad_accum": 1, "seed": seed,
                      "device": "cpu", "progress": False, "tensorboard": False, "save_every": 0, "resume": False,
                      "log_every": max(1, steps // 5)}})
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            result = run_sft(cfg, console_print=lambda *a, **k: None)
        finally:
            torch.set_num_threads(before)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(Path(tmp) / "sft" / "model", out_dir)
    return out_dir, result


def train_lm_scorer(texts: Sequence[str], scores: Sequence[Mapping[str, float]], out_dir: str | Path, *,
                    steps: int = 300, lr: float = 1e-2, batch_size: int = 32, seed: int = 0,
                    model: Mapping[str, int] | None = None, threads: int | None = None) -> Path:
    """Fine-tune a fresh tiny LM on the judged ``scores`` (``{dimension: score}`` per prompt) of ``texts``;
    ``out_dir`` (replaced) becomes the scorer's model folder. Returns it. ``steps=0`` saves the initialised
    model untrained (a baseline to compare with)."""
    from novalign.data.io import write_json_atomic

    if len(texts) < 2:
        raise ValueError(f"tiny-LM scorer: {len(texts)} training prompts; need at least 2")
    ranges = {d: (float(min(s[d] for s in scores)), float(max(s[d] for s in scores))) for d in DIMENSIONS}
    out_dir, result = _finetune(level_rows(texts, scores, ranges), list(texts) + [INSTRUCTION.format(prompt="")] +
                                list(DIGITS), Path(out_dir), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                                model=model, threads=threads, check=_check_reply_tokens)
    write_json_atomic(out_dir / SPEC, {"instruction": INSTRUCTION, "dimensions": list(DIMENSIONS),
                                       "ranges": ranges, "train_prompts": len(texts), "steps": steps,
                                       "final_loss": result.final_loss if result else None})
    return out_dir


def judge_rows(template: str, texts: Sequence[str], scores: Sequence[Mapping[str, float]],
               pairs: Sequence[tuple[int, int]], margin: float) -> list[list[dict]]:
    """Pairwise-judge samples: each pair in both orders, the judge template's four lines as the reply, from the
    judged scores -- ``[[A]]`` where the first-shown prompt's score is above the other's by more than
    ``margin``, ``[[B]]`` where below by more, else ``[[C]]``. Example: scores 0.5 and 0.2, margin 0.1: shown
    first -> A, shown second -> B."""
    from novalign.eval.judge import render

    def lines(a: int, b: int) -> str:
        diff = {d: scores[a][d] - scores[b][d] for d in DIMENSIONS}
        return "\n".join(f"{d.capitalize()}: [[{'A' if diff[d] > margin else 'B' if diff[d] < -margin else 'C'}]]"
                         for d in DIMENSIONS)

    return [[{"role": "user", "content": render(template, prompt_a=texts[x], prompt_b=texts[y])},
             {"role": "assistant", "content": lines(x, y)}] for a, b in pairs for x, y in ((a, b), (b, a))]


def train_lm_judge(texts: Sequence[str], scores: Sequence[Mapping[str, float]], pairs: Sequence[tuple[int, int]],
                   out_dir: str | Path, *, template: str = "prompt_quality_pairwise", margin: float = 0.1,
                   steps: int = 150, lr: float = 1e-2, batch_size: int = 16, seed: int = 0,
                   model: Mapping[str, int] | None = None, threads: int | None = None) -> Path:
    """A tiny LM fine-tuned as a pairwise quality judge on judged ``pairs`` (:func:`judge_rows`): served by
    ``novalign serve``, it answers the judge template as an LLM judge does. Returns the model folder."""
    from novalign.eval.judge import load_template

    if not pairs:
        raise ValueError("tiny-LM judge: no training pairs")
    text = load_template(template)
    rows = judge_rows(text, texts, scores, pairs, margin)
    return _finetune(rows, [r[0]["content"] for r in rows[: 2 * len(texts)]] + [r[1]["content"] for r in rows[:50]],
                     Path(out_dir), steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                     model=model, threads=threads)[0]


def lm_scores(model_dir: str | Path, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """``(len(texts), 4)`` scores from a scorer folder: per dimension the expected level under the model's
    distribution over the ten digits (renormalized over them) at that digit's place in the reply, mapped
    back onto the training score range."""
    import torch

    from novalign.models.generate import encode_chat
    from novalign.models.load import load_model, load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / SPEC).is_file():
        raise FileNotFoundError(f"{model_dir}: not a tiny-LM quality scorer (no {SPEC})")
    spec = json.loads((model_dir / SPEC).read_text(encoding="utf-8"))
    model, tok = load_model(model_dir, dtype="float32"), load_tokenizer(model_dir)
    model.eval()
    digits = torch.tensor([_single_id(tok, d) for d in DIGITS])
    newline = _single_id(tok, "\n")
    dims = spec["dimensions"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    levels = torch.arange(10, dtype=torch.float64)
    out = np.zeros((len(texts), len(dims)))
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = [encode_chat(tok, [{"role": "user", "content": spec["instruction"].format(prompt=t)}])
                    for t in texts[start:start + batch_size]]
            for k in range(len(dims)):
                width = max(len(r) for r in rows)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
                logits = model(input_ids=ids, attention_mask=mask).logits  # right padding: real positions unchanged
                last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])][:, digits]
                out[start:start + len(rows), k] = (torch.softmax(last.double(), dim=-1) @ levels).numpy()
                best = last.argmax(dim=-1).tolist()
                rows = [r + [int(digits[b]), newline] for r, b in zip(rows, best)]
    out /= 9.0
    for k, d in enumerate(dims):
        lo, hi = spec["ranges"][d]
        out[:, k] = lo + out[:, k] * (hi - lo)
    return out


def lm_overall(model_dir: str | Path, texts: Sequence[str], **kw: Any) -> np.ndarray:
    """The overall score: the mean of the four dimensions (as :func:`novalign.flywheel.quality.overall_label`)."""
    return lm_scores(model_dir, texts, **kw).mean(axis=1)
