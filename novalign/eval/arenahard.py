"""Arena-Hard-Auto v0.1 (Li et al. 2024, arXiv:2406.11939) scores from its judgment files, as ``show_result.py``.

Judgment files are ``data/arena-hard-v0.1/model_judgment/<judge>/<model>.jsonl``; each line is
``{question_id, model, judge, games: [game1, game2]}`` and a game is ``{user_prompt, judgment, score}`` with
``score`` one of the judge's five verdicts ``A>>B``, ``A>B``, ``A=B``, ``B>A``, ``B>>A`` (``null`` when no
verdict could be parsed). In game 1 assistant A is the baseline (``gpt-4-0314``) and B the model; game 2
swaps them (position swap). ``get_battles_from_judgment`` turns each game into battles baseline-vs-model:
a strong verdict (``>>``) counts ``weight`` times (3), a plain one once, a tie once, ``null`` not at all.

``compute_mle_elo`` fits a Bradley-Terry model to the battles (a tie counts half a win for each side) on the
Elo scale (400, base 10, the baseline anchored at 1000); the score is the predicted win rate against the
baseline, and the 95 % interval comes from 100 bootstrap resamples of the battles (2.5th / 97.5th
percentiles, each turned into a win rate). The fit here is the classic minorization-maximization iteration
for Bradley-Terry (Hunter 2004), the same maximum-likelihood solution the official unpenalised logistic
regression reaches. With battles only against the baseline (ArenaHard's case) it has the closed form
``win rate = (wins + ties / 2) / battles``, which the tests use.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from novalign.data.io import DataError, iter_records
from novalign.eval.suite_api import SuiteContext

__all__ = ["VERDICTS", "arena_hard_score", "arena_v2_scores", "battles_from_judgments", "bradley_terry",
           "read_arena_judgments",
           "run_arenahard", "win_rate"]

# game verdict -> (winner, strong); the v2.0 files also write the mirrored forms
VERDICTS = {"A>>B": ("A", True), "A>B": ("A", False), "A=B": ("tie", False), "B>A": ("B", False),
            "B>>A": ("B", True), "A<<B": ("B", True), "A<B": ("B", False), "B=A": ("tie", False),
            "B<A": ("A", False), "B<<A": ("A", True)}
Battle = tuple[str, str, str]  # (model_a, model_b, winner: "model_a" | "model_b" | "tie")


def read_arena_judgments(path: str | Path) -> list[dict]:
    """The lines of a judgment file: ``{question_id (or uid), model, games}`` checked; unknown verdicts are errors.

    Raises:
        DataError: naming file, line and field (``games[1].score`` for a verdict not among :data:`VERDICTS`).
    """
    records = []
    for line, rec in iter_records(path):
        if "question_id" not in rec and "uid" in rec:  # the releases since v2.0 (and v0.1 re-issued) key by uid
            rec["question_id"] = rec["uid"]
        if "question_id" not in rec or not isinstance(rec.get("model"), str):
            raise DataError(path, line, "question_id" if "question_id" not in rec else "model", "missing")
        games = rec.get("games")
        if not isinstance(games, list) or len(games) not in (1, 2):
            raise DataError(path, line, "games", "expected a list of one or two games")
        for i, game in enumerate(games):
            if game is None:  # gen_judgment.py appends None when the judge call failed
                continue
            score = game.get("score") if isinstance(game, dict) else "?"
            if score is not None and score not in VERDICTS:
                raise DataError(path, line, f"games[{i}].score", f"expected one of {sorted(VERDICTS)} or null, got {score!r}")
        records.append({"question_id": rec["question_id"], "model": rec["model"], "scores": [g.get("score") if g is not None else None for g in games],
                        **({"category": rec["category"]} if "category" in rec else {}), "uid": "uid" in rec})
    return records


def battles_from_judgments(records: Sequence[dict], baseline: str, *, weight: int = 3,
                           first_game_only: bool = False) -> list[Battle]:
    """Battles (baseline as ``model_a``) from judged games, as ``get_battles_from_judgment``.

    Game 1 has the baseline as A, game 2 has the model as A, so a game-2 "A" win is the model's.
    Example: scores ``["A>>B", "A=B"]`` for model m -> 3 baseline wins and 1 tie; ``["B>A", None]`` -> 1 win of m.
    """
    battles: list[Battle] = []
    for rec in records:
        for game, score in enumerate(rec["scores"][:1] if first_game_only else rec["scores"]):
            if score is None:
                continue
            side, strong = VERDICTS[score]
            if side == "tie":
                winner = "tie"
            else:
                baseline_won = (side == "A") == (game == 0)
                winner = "model_a" if baseline_won else "model_b"
            battles += [(baseline, rec["model"], winner)] * (weight if strong else 1)
    return battles


def bradley_terry(battles: Sequence[Battle], baseline: str, *, scale: float = 400, base: float = 10,
                  init: float = 1000, iterations: int = 10_000, tol: float = 1e-12) -> dict[str, float]:
    """Elo-scale Bradley-Terry ratings by maximum likelihood, the baseline at ``init``.

    Ties count half a win for each side (the official duplicated-data trick). MM update (Hunter 2004):
    ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``. Rating ``= scale * log_base(p_i / p_baseline) + init``.
    Example: baseline vs m, m wins 3, ties 2, loses 5 -> p_m / p_b = 4 / 6 -> m = 1000 + 400 log10(2/3) = 929.56.
    A model that never wins (or never loses) has no finite MLE: its rating is -inf (+inf).
    """
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    if baseline not in models:
        raise ValueError(f"the baseline {baseline!r} is in no battle")
    wins, losses = defaultdict(float), defaultdict(float)
    for a, b, winner in battles:
        for m, won in ((a, {"model_a": 1.0, "tie": 0.5}.get(winner, 0.0)), (b, {"model_b": 1.0, "tie": 0.5}.get(winner, 0.0))):
            wins[m] += won
            losses[m] += 1 - won
    # a model that never loses (never wins) has its MLE at +inf (-inf); its battles are then explained with
    # certainty and drop out of the others' likelihood
    infinite = {m: math.inf if losses[m] == 0 else -math.inf for m in models if wins[m] == 0 or losses[m] == 0}
    if baseline in infinite:
        raise ValueError(f"the baseline {baseline!r} won or lost every battle: no finite ratings")
    kept = [(a, b, w) for a, b, w in battles if a not in infinite and b not in infinite]
    if len(kept) < len(battles):
        return {**bradley_terry(kept, baseline, scale=scale, base=base, init=init, iterations=iterations, tol=tol),
                **infinite}
    p = _mm(kept, models, iterations, tol)
    return {m: scale * math.log(p[m] / p[baseline], base) + init for m in models}


def _mm(battles: Sequence[Battle], models: list[str], iterations: int, tol: float) -> dict[str, float]:
    """Hunter's MM iteration for Bradley-Terry strengths (ties as half wins), normalised to geometric mean 1."""
    index = {m: i for i, m in enumerate(models)}
    wins = np.zeros(len(models))
    games = np.zeros((len(models), len(models)))
    for a, b, winner in battles:
        i, j = index[a], index[b]
        games[i, j] += 1
        games[j, i] += 1
        wins[i] += {"model_a": 1.0, "tie": 0.5}.get(winner, 0.0)
        wins[j] += {"model_b": 1.0, "tie": 0.5}.get(winner, 0.0)
    p = np.ones(len(models))
    for _ in range(iterations):
        new = wins / (games / (p[:, None] + p[None, :])).sum(1)
        new /= np.exp(np.mean(np.log(new)))
        delta = float(np.max(np.abs(np.log(new) - np.log(p))))
        p = new
        if delta < tol:
            break
    return {m: float(p[i]) for m, i in index.items()}


def win_rate(rating: float, baseline_rating: float, *, scale: float = 400, base: float = 10) -> float:
    """``predict_win_rate``: ``1 / (1 + base ** ((baseline - rating) / scale))``."""
    if math.isinf(rating):
        return 1.0 if rating > 0 else 0.0
    return 1 / (1 + base ** ((baseline_rating - rating) / scale))


def arena_hard_score(battles: Sequence[Battle], baseline: str, *, rounds: int = 100, seed: int = 42) -> dict[str, dict]:
    """Per model: ``score`` (win rate against the baseline), ``lower`` / ``upper`` (2.5 / 97.5 percentiles of
    ``rounds`` bootstrap fits, as win rates) and ``battles``. Fractions; the official table prints them x100,
    2 decimals. The bootstrap draws with numpy's seeded generator, so the interval is reproducible, though
    not digit-equal to the official pandas ``sample`` draws."""
    point = bradley_terry(battles, baseline)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        drawn = [battles[i] for i in rng.integers(0, len(battles), len(battles))]
        try:
            fit = bradley_terry(drawn, baseline)
        except ValueError:  # a resample where the baseline never lost: skipped, as it cannot anchor
            continue
        for m, r in fit.items():
            samples[m].append(r)
    counts: dict[str, int] = defaultdict(int)
    for a, b, _ in battles:
        counts[a] += 1
        counts[b] += 1
    out = {}
    for m, r in point.items():
        # an infinite rating (a resample where m never lost) stands in as a huge finite one, where the
        # official logistic regression stops; the percentiles then interpolate as there
        drawn = np.clip(np.array(samples[m] or [r]), -1e6, 1e6)
        lower, upper = np.percentile(drawn, [2.5, 97.5])
        out[m] = {"score": win_rate(r, point[baseline]), "lower": win_rate(float(lower), 1000.0),
                  "upper": win_rate(float(upper), 1000.0), "battles": counts[m]}
    return out


_V2_SCORE = {"A>B": (1,), "A>>B": (1, 1, 1), "A=B": (0.5,), "A<<B": (0, 0, 0), "A<B": (0,), "B>A": (0,),
             "B>>A": (0, 0, 0), "B=A": (0.5,), "B<<A": (1, 1, 1), "B<A": (1,)}  # from assistant A's side


def arena_v2_scores(records: Sequence[dict], *, weight: int = 3, rounds: int = 100,
                    seed: int = 42) -> dict[str, dict[str, float]]:
    """The current ``show_result.py`` (since v2.0): a question with a null game is dropped whole; each game
    gives the model battle scores 1 / 0.5 / 0 (a strong verdict ``weight`` of them), game 2 (the model as A)
    as labelled and game 1 (the baseline as A) as one minus; the score is their mean, the interval the 5th /
    95th percentiles of ``rounds`` bootstrap means (each model's battles resampled). The official table
    prints the average of its unseeded bootstrap means, which differs from the plain mean only by that
    sampling noise. Example: game 1 ``A>B``, game 2 ``A>>B`` -> battles [1, 1, 1, 0] -> 0.75."""
    table = {k: v if len(v) == 1 else (v[0],) * weight for k, v in _V2_SCORE.items()}
    battles: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        g1, g2 = (list(rec["scores"]) + [None, None])[:2]
        if g1 is None or g2 is None:
            continue
        battles[rec["model"]] += [*table[g2], *(1 - x for x in table[g1])]
    rng = np.random.default_rng(seed)
    out = {}
    for model, values in sorted(battles.items()):
        arr = np.asarray(values, dtype=float)
        means = [float(arr[rng.integers(0, len(arr), len(arr))].mean()) for _ in range(rounds)]
        lower, upper = np.percentile(means, [5, 95])
        out[model] = {"score": float(arr.mean()), "lower": float(lower), "upper": float(upper), "battles": len(arr)}
    return out


def run_arenahard(ctx: SuiteContext) -> dict[str, Any]:
    """Arena-Hard from judgment files (``options.judgments``: a file or a list of files, the official
    ``model_judgment/<judge>/<model>.jsonl``): the model's win rate against ``options.baseline``
    (default ``gpt-4-0314``) with its bootstrap interval; ``options.weight`` (3), ``options.rounds`` (100),
    ``options.first_game_only``; ``options.scoring``: ``v0.1`` (the above) or ``v2`` (the current
    ``show_result.py``: :func:`arena_v2_scores`), by default ``v2`` for files keyed by ``uid`` (written by the
    current code) and ``v0.1`` otherwise; ``options.category`` keeps one category (v2 files: ``hard_prompt``,
    ``creative_writing``). Without ``options.judgments`` the judge is asked
    (:func:`novalign.eval.arenahard_judge.judge_arena_answers`: ``data`` the question file, answers from
    ``options.responses`` / ``options.baseline_answers`` or the model under test / the peer named ``baseline``)."""
    baseline = ctx.options.get("baseline", "gpt-4-0314")
    if "judgments" not in ctx.options:
        from novalign.eval.arenahard_judge import judge_arena_answers

        judged = judge_arena_answers(ctx, baseline)
        return _arena_summary(ctx, judged, baseline, write=False)
    paths = ctx.options["judgments"]
    paths = [paths] if isinstance(paths, str) else list(paths)
    return _arena_summary(ctx, [r for p in paths for r in read_arena_judgments(p)], baseline, write=True)


def _arena_summary(ctx: SuiteContext, records: list[dict], baseline: str, *, write: bool) -> dict[str, Any]:
    """Battles, Bradley-Terry scores and the summary of judged ``records`` (``{question_id, model, scores}``);
    ``write``: also write one record per line (re-scored files; judged records were written as judged)."""
    if ctx.options.get("category"):
        records = [r for r in records if r.get("category") == ctx.options["category"]]
    scoring = ctx.options.get("scoring") or ("v2" if any(r.get("uid") for r in records) else "v0.1")
    if scoring not in ("v0.1", "v2"):
        raise ValueError(f"suite {ctx.name!r}: options.scoring must be v0.1 or v2, got {scoring!r}")
    weight, rounds = int(ctx.options.get("weight", 3)), int(ctx.options.get("rounds", 100))
    if scoring == "v2":
        scores = arena_v2_scores(records, weight=weight, rounds=rounds)
    else:
        battles = battles_from_judgments(records, baseline, weight=weight,
                                         first_game_only=bool(ctx.options.get("first_game_only", False)))
        scores = arena_hard_score(battles, baseline, rounds=rounds)
    for rec in records if write else []:
        key = f"{rec['model']}/{rec['question_id']}"
        if key not in ctx.done:
            ctx.write({"id": key, "category": rec["model"], "failed": all(s is None for s in rec["scores"]),
                       "scores": rec["scores"]})
    models = sorted({r["model"] for r in records} & set(scores))
    by_model = {m: {k: scores[m][k] for k in ("score", "lower", "upper")} for m in models}
    main = ctx.model_name if ctx.model_name in by_model else (models[0] if len(models) == 1 else None)
    metrics = dict(by_model[main]) if main else {}
    return {"metrics": metrics, "by_category": by_model, "num_samples": len(records),
            "num_failed": sum(all(s is None for s in r["scores"]) for r in records), "baseline": baseline,
            "scoring": scoring,
            "decimals": {k: 4 for k in ("score", "lower", "upper")}}
