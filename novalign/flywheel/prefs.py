"""Preference data from sampled responses (report section 3.3).

The report's recipe: sample several responses per prompt, drop near-identical ones with "a rouge rule based
filter", score the rest (the golden-answer AutoRator where a reference exists), and remove "prompts with all
high-scoring responses or very similar scoring responses". What is left is a group of scored responses per
prompt, the input of the reward model's Bradley-Terry + MSE objective (equation 1).

:func:`rouge_filter` and :func:`build_groups` are pure functions over strings and scores; :func:`sample` and
:func:`score` are the two steps that need a model and a scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["rouge_filter", "PrefsStats", "build_groups", "mixed_outcomes", "read_prompts", "sample", "score",
           "run_prefs"]

# a batch reward in novalign's RewardFn shape: (prompts, completions, **per-sample fields) -> one score each
Scorer = Callable[..., list[float]]


def rouge_filter(responses: Sequence[str], threshold: float) -> tuple[list[int], int]:
    """Indices of the responses kept after dropping near-duplicates, and how many were dropped.

    A response whose ROUGE-L F1 (Lin, 2004) with an already kept one is ``>= threshold`` is dropped; exact
    duplicates always count as 1.0. Greedy in input order, so the first of a near-identical set survives.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    kept: list[int] = []
    for i, text in enumerate(responses):
        dup = any(text == responses[j] or scorer.score(responses[j], text)["rougeL"].fmeasure >= threshold
                  for j in kept)
        if not dup:
            kept.append(i)
    return kept, len(responses) - len(kept)


@dataclass
class PrefsStats:
    """What :func:`build_groups` kept and dropped, with the reason for every drop."""

    prompts: int = 0
    samples: int = 0
    dropped_empty: int = 0  # an empty reply is no preference response
    dropped_near_duplicates: int = 0  # ROUGE-L filter
    groups_without_signal: int = 0  # fewer than two distinct scores among the kept responses
    groups: int = 0
    sample_pass_rate: dict[str, float] = field(default_factory=dict)  # per capability: share of samples scoring 1

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "samples": self.samples, "dropped_near_duplicates": self.dropped_near_duplicates,
                "dropped_empty": self.dropped_empty, "groups_without_signal": self.groups_without_signal,
                "sample_pass_rate": self.sample_pass_rate, "groups": self.groups}


def build_groups(prompts: Sequence[dict], samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], *,
                 rouge_threshold: float, group_key: str = "capability") -> tuple[list[dict], PrefsStats]:
    """One preference group per prompt that carries a signal.

    Args:
        prompts: prompt records with ``messages`` (the conversation without its answer) and, optionally, the
            ``group_key`` field the pass rates are reported by.
        samples: the responses of each prompt (``samples[i]`` for ``prompts[i]``).
        scores: their scores in [0, 1] (same shape as ``samples``).
        rouge_threshold: ROUGE-L F1 at which a response is a near-duplicate of a kept one.

    Returns:
        ``[{"prompt": messages, <group_key>: ..., "responses": [{"content", "score"}, ...]}, ...]`` (the
        ``novalign rm`` group format) and the statistics.
    """
    stats = PrefsStats(prompts=len(prompts), samples=sum(len(s) for s in samples))
    per_group: dict[str, list[bool]] = {}
    groups = []
    for record, texts, values in zip(prompts, samples, scores, strict=True):
        label = record.get(group_key, "all")
        per_group.setdefault(label, []).extend(v >= 1.0 for v in values)
        nonempty = [i for i, t in enumerate(texts) if t.strip()]
        stats.dropped_empty += len(texts) - len(nonempty)
        kept, dropped = rouge_filter([texts[i] for i in nonempty], rouge_threshold)
        kept = [nonempty[i] for i in kept]
        stats.dropped_near_duplicates += dropped
        if len({values[i] for i in kept}) < 2:
            stats.groups_without_signal += 1
            continue
        group = {"prompt": record["messages"]}
        if group_key in record:
            group[group_key] = record[group_key]
        groups.append(group | {"responses": [{"content": texts[i], "score": values[i]} for i in kept]})
    stats.sample_pass_rate = {c: sum(v) / len(v) for c, v in per_group.items()}
    stats.groups = len(groups)
    return groups, stats


def mixed_outcomes(prompt_scores: Sequence[dict]) -> list[int]:
    """Indices of the prompts whose samples did not all score the same (``prompt_scores.jsonl`` rows:
    ``{"index", "scores"}``): the groups that carry a GRPO signal -- a group whose samples all score alike has
    zero advantage and teaches nothing.

    >>> mixed_outcomes([{"index": 0, "scores": [1, 1]}, {"index": 1, "scores": [0, 1]}])
    [1]
    """
    return [row["index"] for row in prompt_scores if len(set(row["scores"])) > 1]


def sample(model_dir: str, prompts: Sequence[dict], *, n: int, max_new_tokens: int, temperature: float,
           batch_size: int, seed: int) -> list[list[str]]:
    """``n`` sampled responses per prompt from a local model (chat template), seeded per row so that the
    result does not depend on batching."""
    from novalign.models.generate import encode_chat, generate_texts
    from novalign.models.load import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir, dtype="float32")
    ids = [encode_chat(tokenizer, r["messages"]) for r in prompts for _ in range(n)]
    texts = generate_texts(model, tokenizer, ids, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=batch_size, seed=seed)
    return [texts[g * n : (g + 1) * n] for g in range(len(prompts))]


def score(prompts: Sequence[dict], samples: Sequence[Sequence[str]], scorer: Scorer) -> list[list[float]]:
    """Every sample scored in one call of ``scorer`` (a reward function: verifiers, a reward model, an LLM
    judge, or a weighted mix of them). Each prompt record's fields other than ``messages`` (``answer``,
    ``check``, ...) go to the scorer per sample, ``None`` where a record lacks one."""
    names = sorted({k for r in prompts for k in r if k != "messages"})
    flat = [(r, t) for r, texts in zip(prompts, samples, strict=True) for t in texts]
    fields = {k: [r.get(k) for r, _ in flat] for k in names}
    values = scorer([r["messages"] for r, _ in flat], [t for _, t in flat], **fields)
    out, start = [], 0
    for texts in samples:
        out.append([float(v) for v in values[start : start + len(texts)]])
        start += len(texts)
    return out


def read_prompts(files: Sequence[str | Path]) -> list[dict]:
    """Prompt records with ``messages``: a ``prompt`` string becomes one user turn, and a trailing assistant
    turn (the answer) is dropped, as GRPO reads prompts. Other fields are kept for the scorer. A record with
    neither is a :class:`~novalign.data.io.DataError` naming file and line; ``responses``, when present, must
    be a list of strings."""
    from novalign.data.io import DataError, iter_records

    out = []
    for f in files:
        for line, r in iter_records(Path(f)):
            if isinstance(r.get("messages"), list) and r["messages"]:
                messages = r["messages"][:-1] if r["messages"][-1].get("role") == "assistant" else r["messages"]
            elif isinstance(r.get("prompt"), str):
                messages = [{"role": "user", "content": r["prompt"]}]
            else:
                raise DataError(f, line, "messages", "a prompt record needs a `messages` list or a `prompt` string",
                                reason="no prompt")
            if "responses" in r and not (isinstance(r["responses"], list)
                                         and all(isinstance(t, str) for t in r["responses"])):
                raise DataError(f, line, "responses", "must be a list of strings", reason="bad responses")
            out.append({k: v for k, v in r.items() if k not in ("messages", "prompt")} | {"messages": messages})
    return out


def run_prefs(cfg, *, prompts: Sequence[dict] | None = None, scorer: Scorer | None = None,
              console_print: Callable[[str], None] = print) -> PrefsStats:
    """``novalign data prefs``: sample (unless the records carry ``responses``), score, filter, group, and write
    ``prefs.jsonl`` (the ``novalign rm`` group format), ``prompt_scores.jsonl`` and ``stats.json`` to
    ``cfg.output_dir`` (a :class:`~novalign.config.PrefsDataConfig`).

    ``prompts`` and ``scorer`` replace ``cfg.prompt_files`` and ``cfg.rewards`` (the recipe passes the world's
    prompts and checkers).

    Raises:
        ValueError: no model for prompts without responses, or no group with a score difference.
    """
    from novalign.data.io import write_json_atomic, write_jsonl

    prompts = list(prompts) if prompts is not None else read_prompts(cfg.prompt_files)
    given = [r for r in prompts if "responses" in r]
    if given and len(given) != len(prompts):
        raise ValueError("prefs: either every prompt record carries `responses` or none does")
    if given:
        samples = [list(r["responses"]) for r in prompts]
        prompts = [{k: v for k, v in r.items() if k != "responses"} for r in prompts]
    elif cfg.model is None:
        raise ValueError("prefs: the prompts carry no `responses`; set `model` (a local model directory) to sample")
    else:
        samples = sample(cfg.model, prompts, n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed)
    close = None
    if scorer is None:
        from novalign.train.rl.inputs import build_reward, close_reward

        scorer = build_reward(cfg.rewards, device=cfg.device)
        close = close_reward
    try:
        scores = score(prompts, samples, scorer)
    finally:
        if close is not None:
            close(scorer)
    groups, stats = build_groups(prompts, samples, scores, rouge_threshold=cfg.rouge_threshold,
                                 group_key=cfg.group_key)
    if not groups:
        raise ValueError("prefs: no prompt had samples with different scores; raise n or temperature")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "prefs.jsonl", groups)
    write_jsonl(out / "prompt_scores.jsonl", [{"index": g, cfg.group_key: r.get(cfg.group_key, "all"), "scores": s}
                                               for g, (r, s) in enumerate(zip(prompts, scores))])
    write_json_atomic(out / "stats.json", stats.to_dict(), indent=1)
    console_print(f"prefs: {stats.groups} groups from {stats.prompts} prompts; dropped {stats.dropped_empty} empty, "
                  f"{stats.dropped_near_duplicates} near-duplicates, {stats.groups_without_signal} prompts without "
                  f"a score difference; sample pass rate {stats.sample_pass_rate}")
    return stats
