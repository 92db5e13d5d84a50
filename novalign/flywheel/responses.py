"""Response groups for preference data (report sections 3.2 and 3.3): the pure arithmetic of the chain.

The chain works on **group records**, one per prompt::

    {"_id": "p1", "prompt": "..." or [messages], "labels": {"ability": "Math", ...}, "answer": "7",
     "responses": [{"content": "...", "model": "big", "params": {"temperature": 1.0, "top_p": 0.99,
                    "top_k": 50, ...}, "sample": 0, "score": 0.8, "rater": "golden"}, ...],
     "removed": [{"content": "...", "model": "small", "reason": "near-duplicate response"}]}

Nothing leaves a group silently: a response taken out (ROUGE filter, pre-filter) moves to ``removed`` with its
reason, and a group taken out is a pipeline drop with its reason (``drops.jsonl``, ``stats.json``).

* :func:`graded_indices` -- section 3.2's pre-filter: "a response set with graded quality distinctions" (best,
  middle, worst by a reward model's or a judge's score);
* :func:`rouge_keep` -- section 3.3's "rouge rule based filter" over a group (near-identical responses out);
* :func:`drop_reason` -- section 3.3's drop rules: "prompts with all high-scoring responses or very similar
  scoring responses are removed";
* :func:`rm_group` / :func:`trl_pairs` -- the RM-ready outputs: ``{prompt, responses: [{content, score, model}]}``
  (read by ``novalign rm`` as groups) and TRL preference pairs carrying the absolute scores of equation 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from novalign.data.fields import get_path  # noqa: F401 - re-exported: steps import it from here

__all__ = ["REPORT_SAMPLING", "get_path", "graded_indices", "rouge_keep", "drop_reason", "all_low", "messages_of",
           "rm_group", "trl_pairs"]

REPORT_SAMPLING = {"n": 5, "temperature": 1.0, "top_p": 0.99, "top_k": 50}
"""Section 3.3: "Top 3 most advanced models to sample 5 responses for each prompt ... Temperature = 1,
TopP = 0.99, TopK = 50" -- the defaults of the ``respond`` step."""


def graded_indices(scores: Sequence[float], keep: int) -> list[int]:
    """Indices of ``keep`` responses spread evenly over the score order, best first (ties keep input order).

    Sorted best first, positions ``round(i * (n - 1) / (keep - 1))`` for ``i = 0 .. keep - 1`` are taken: with
    ``keep = 3`` that is best, middle (the median position) and worst. A group of ``keep`` or fewer is kept whole.

    >>> graded_indices([0.2, 0.9, 0.5, 0.1, 0.7], 3)   # order 1 (0.9), 4 (0.7), 2 (0.5), 0 (0.2), 3 (0.1)
    [1, 2, 3]
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    n = len(order)
    if n <= keep:
        return order
    if keep == 1:
        return order[:1]
    positions = sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})
    return [order[p] for p in positions]


def rouge_keep(texts: Sequence[str], threshold: float) -> tuple[list[int], dict[int, str]]:
    """Indices kept by the ROUGE-L filter, and a reason for every index taken out (empty, or near-duplicate of a
    kept one at ROUGE-L F1 >= threshold; :func:`novalign.flywheel.prefs.rouge_filter` does the comparison)."""
    from novalign.flywheel.prefs import rouge_filter

    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    reasons = {i: "empty response" for i in range(len(texts)) if i not in set(nonempty)}
    kept_local, _ = rouge_filter([texts[i] for i in nonempty], threshold)
    kept = [nonempty[i] for i in kept_local]
    for i in nonempty:
        if i not in kept:
            reasons[i] = "near-duplicate response"
    return kept, reasons


def drop_reason(scores: Sequence[float], *, high: float | None, margin: float | None, min_responses: int = 2
                ) -> str | None:
    """Why a group leaves the chain (section 3.3's drop rules), or ``None`` when it stays. Scores are in [0, 1].

    In order: fewer than ``min_responses`` responses -> ``"fewer than N responses"``; every score ``>= high`` ->
    ``"all responses score high"`` (the models already answer it well); ``max - min <= margin`` -> ``"scores
    within margin"`` (no preference to learn). ``None`` turns a rule off.

    >>> drop_reason([0.9, 0.95], high=0.8, margin=0.1)
    'all responses score high'
    >>> drop_reason([0.4, 0.45], high=0.8, margin=0.1)
    'scores within margin'
    """
    if len(scores) < min_responses:
        return f"fewer than {min_responses} responses"
    if high is not None and all(s >= high for s in scores):
        return "all responses score high"
    if margin is not None and max(scores) - min(scores) <= margin + 1e-12:
        return "scores within margin"
    return None


def all_low(scores: Sequence[float], low: float) -> bool:
    """Every response scores below ``low``: the group goes to response modification (section 3.2)."""
    return bool(scores) and all(s < low for s in scores)


def messages_of(prompt: Any, system: str | None = None) -> list[dict]:
    """A prompt as chat messages: a string is one user turn (after ``system`` if given); a list is kept."""
    if isinstance(prompt, str):
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return [dict(m) for m in prompt]
    raise TypeError(f"a prompt is a string or a list of messages, got {type(prompt).__name__}")


def rm_group(record: dict, *, score_key: str = "score", extra: Sequence[str] = ()) -> dict:
    """The ``novalign rm`` group of a group record: ``{prompt, responses: [{content, score, model}]}`` (plus
    ``rank`` when every response has one, and the record fields named in ``extra``, e.g. ``labels``)."""
    responses = []
    for r in record["responses"]:
        item = {"content": r["content"], "score": r[score_key], "model": r.get("model")}
        if r.get("rank") is not None:
            item["rank"] = r["rank"]
        responses.append(item)
    if not all("rank" in r for r in responses):
        for r in responses:
            r.pop("rank", None)
    out = {"prompt": messages_of(record["prompt"]), "responses": responses}
    return out | {k: record[k] for k in extra if k in record}


def trl_pairs(group: dict, *, max_pairs: int | None = None) -> list[dict]:
    """TRL preference pairs of an ``rm`` group: every two responses whose order differs (by ``rank`` when every
    response has one, else by ``score``), chosen the better one, with both absolute scores (``score_chosen``,
    ``score_rejected``: TRL's spelling, read by ``novalign rm`` as the MSE targets of equation 1). Pairs come
    widest score gap first, so ``max_pairs`` keeps the clearest.

    >>> g = {"prompt": [{"role": "user", "content": "q"}], "responses": [
    ...     {"content": "a", "score": 0.2}, {"content": "b", "score": 0.9}, {"content": "c", "score": 0.2}]}
    >>> [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in trl_pairs(g)]
    [('b', 'a'), ('b', 'c')]
    """
    rs = group["responses"]
    ranked = all(r.get("rank") is not None for r in rs)
    better = (lambda a, b: a["rank"] < b["rank"]) if ranked else (lambda a, b: a["score"] > b["score"])
    pairs = []
    for i in range(len(rs)):
        for j in range(len(rs)):
            if i != j and better(rs[i], rs[j]) and rs[i]["content"] != rs[j]["content"]:
                pairs.append((rs[i]["score"] - rs[j]["score"], i, j))
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    out = []
    for _, i, j in pairs[:max_pairs]:
        out.append({"prompt": group["prompt"], "chosen": [{"role": "assistant", "content": rs[i]["content"]}],
                    "rejected": [{"role": "assistant", "content": rs[j]["content"]}],
                    "score_chosen": rs[i]["score"], "score_rejected": rs[j]["score"],
                    "model_chosen": rs[i].get("model"), "model_rejected": rs[j].get("model")})
    return out
