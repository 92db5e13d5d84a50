"""AlpacaEval 2 (Dubois et al. 2024, arXiv:2404.04475) from its annotation files, scored as ``tatsu-lab/alpaca_eval``.

Files: ``results/<model>/weighted_alpaca_eval_gpt4_turbo/annotations.json``, a JSON array with one object per
instruction (805, in the eval set's order): ``instruction``, ``output_1`` / ``generator_1`` (the baseline,
``gpt4_1106_preview``), ``output_2`` / ``generator_2`` (the model), ``preference`` and ``annotator``.
``preference`` is in [1, 2]: 1 the baseline is preferred, 2 the model, 1.5 (or the legacy 0) a draw; the
weighted GPT-4-turbo annotator writes the judge's probability, ``1 + P(model)``. ``null`` is no preference.
``results/<model>/model_outputs.json`` holds the model's ``output`` per instruction.

Win rate (``metrics/helpers.py``, ``AbsoluteScoringRule.describe_head2head``): preferences outside [1, 2]
(and nulls) are dropped; ``win_rate = 100 * mean(preference - 1)``, ``standard_error`` its standard error of
the mean (ddof 1), ``n_wins`` the count above 1.5, ``n_wins_base`` below, ``n_draws`` the count equal to 1.5
or 0. ``discrete_win_rate`` (``ZeroOneScoringRule``) first rounds each preference to 1 or 2 (a draw stays a
draw, worth one half). ``avg_length`` is ``int(mean(len(output)))`` over the model's outputs, in characters.

Length-controlled win rate (``metrics/glm_winrate.py``, ``length_controlled_v1``; Dubois et al. section 3):
a logistic GLM of the preference on ``tanh(std_delta_len)``, ``instruction_difficulty`` and a
``not_gamed_baseline`` indicator, no intercept, where ``std_delta_len = (len(output_1) - len(output_2)) /
std`` (characters, std over the model's rows, ddof 1) and ``instruction_difficulty`` is a per-instruction
term published with the benchmark (``instruction_difficulty.csv`` of the ``tatsu-lab/alpaca_eval`` dataset,
indexed by instruction position). The preference in [0, 1] is the target, fitted as a weighted pair of rows
(label 1 weighted by p, label 0 by 1 - p); the fit is scikit-learn's ``LogisticRegressionCV`` with an L1
penalty (liblinear, ``random_state=123``), 10 values of C chosen by 5-fold ``GroupKFold`` (one group per
instruction row) on the same continuous log loss. The model's rows weigh 1; the rows of the two length-gamed
baselines (``gpt4_1106_preview_verbose`` / ``_concise``, the dataset's ``df_gamed.csv``, ``not_gamed_baseline``
false) weigh ``lambda / 2 = 0.1``, which regularizes the length and difficulty weights towards theirs. The LC
win rate is the mean over the model's rows of the fitted probability with the length term set to 0:
``sigmoid(w_difficulty * difficulty_i + w_not_gamed)``, x100; ``lc_standard_error`` its standard error.
The baseline against itself is 50 by construction.

The two dataset files are needed for the published LC numbers; they are inputs here (not bundled).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from novalign.data.io import DataError
from novalign.eval.official import iter_json_items
from novalign.eval.suite_api import SuiteContext

__all__ = ["GLM_FORMULAS", "glm_rows", "length_controlled_win_rate", "predict_win_rate", "read_alpaca_annotations",
           "read_gamed_rows", "read_instruction_difficulty", "read_model_outputs", "run_alpacaeval", "win_rate_stats"]

# the official GLMs (GLM_INFO): features used and the regularization towards the gamed baselines
GLM_FORMULAS = {
    "length_controlled_v1": {"features": ("len", "difficulty", "not_gamed"), "lambda": 0.2},
    "length_controlled_noreg": {"features": ("len", "difficulty", "not_gamed"), "lambda": None},
    "length_controlled_minimal": {"features": ("len", "not_gamed"), "lambda": None},
}
_N_SPLITS = 5


# ------------------------------------------------------------------------------------------------ readers


def read_alpaca_annotations(path: str | Path) -> list[dict[str, Any]]:
    """The records of an ``annotations.json``, in file order, each with its position as ``index``.

    Raises:
        DataError: naming file, line and field: a missing output or generator, a preference that is not a
            number or null.
    """
    out = []
    for line, rec in iter_json_items(path):
        for name in ("output_1", "output_2", "generator_1", "generator_2"):
            if not isinstance(rec.get(name), str):
                raise DataError(path, line, name, f"missing or not a string (got {type(rec.get(name)).__name__})")
        pref = rec.get("preference")
        if isinstance(pref, str):  # some community files write the number as a string
            try:
                pref = float(pref)
            except ValueError:
                raise DataError(path, line, "preference", f"not a number: {pref!r}") from None
        if pref is not None and (isinstance(pref, bool) or not isinstance(pref, (int, float))):
            raise DataError(path, line, "preference", f"expected a number in [1, 2] or null, got {pref!r}")
        out.append({"index": len(out), "instruction": rec.get("instruction", ""), "output_1": rec["output_1"],
                    "output_2": rec["output_2"], "generator_1": rec["generator_1"], "generator_2": rec["generator_2"],
                    "preference": None if pref is None else float(pref), "annotator": rec.get("annotator"),
                    "line": line})
    if not out:
        raise DataError(path, None, None, "no annotations")
    return out


def read_model_outputs(path: str | Path) -> list[str]:
    """The ``output`` of each record of a ``model_outputs.json``."""
    outputs = []
    for line, rec in iter_json_items(path):
        if not isinstance(rec.get("output"), str):
            raise DataError(path, line, "output", "missing or not a string")
        outputs.append(rec["output"])
    return outputs


def read_instruction_difficulty(path: str | Path) -> dict[int, float]:
    """``instruction_difficulty.csv`` (columns ``index``, ``instruction_difficulty``) -> {index: difficulty}."""
    return {int(row["index"]): float(row["instruction_difficulty"])
            for row in _csv_rows(path, ("index", "instruction_difficulty"))}


def read_gamed_rows(path: str | Path) -> list[dict[str, float]]:
    """``df_gamed.csv``: the gamed baselines' GLM rows (``preference`` in [0, 1], ``std_delta_len``,
    ``instruction_difficulty``, ``index``), as :func:`glm_rows` makes them, ``not_gamed`` 0."""
    need = ("index", "preference", "std_delta_len", "instruction_difficulty")
    return [{"index": int(float(r["index"])), "preference": _float_or_nan(r["preference"]),
             "std_delta_len": float(r["std_delta_len"]), "instruction_difficulty": float(r["instruction_difficulty"]),
             "not_gamed": 0.0} for r in _csv_rows(path, need)]


def _float_or_nan(text: str) -> float:
    return float(text) if text.strip() else math.nan


def _csv_rows(path: str | Path, need: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        if header and header[0] == "" and "index" in need and "index" not in header:
            header[0] = "index"  # pandas writes the index column with an empty name
            reader.fieldnames = header
        missing = [c for c in need if c not in header]
        if missing:
            raise DataError(path, 1, None, f"the header lacks the columns {missing} (has {header})")
        rows = []
        for row_number, row in enumerate(reader, start=2):
            for column in need:
                value = row.get(column) or ""
                if column == "preference" and not value.strip():
                    continue  # no preference: NaN, left out of the fit as officially
                try:
                    float(value)
                except ValueError:
                    raise DataError(path, row_number, column, f"not a number: {value!r}") from None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- win rate


def win_rate_stats(preferences: Sequence[float | None]) -> dict[str, float]:
    """``get_winrate``: win rate and counts from preferences in [1, 2] (see the module doc).

    Example: [2, 1, 1.5, 1.8, None, 0] -> 0 and 1.5 are draws; None dropped; kept [1, 0, .5, .8, .5] -> win rate
    100 * 2.8 / 5 = 56; wins 2 (1, .8), base wins 1, draws 2; discrete: 1.8 -> 2, so (2 + 2 / 2) / 5 = 60.
    """
    kept = [0.5 if p == 0 else p - 1 for p in preferences if p is not None and (p == 0 or 1 <= p <= 2)]
    if not kept:
        raise ValueError("no preference in [1, 2] to compute a win rate from")
    n_draws = sum(p == 0 or p == 1.5 for p in preferences if p is not None)
    discrete = [0.5 if k == 0.5 else float(np.round(k + 1)) - 1 for k in kept]  # 1.5 stays a draw (is replaced first)
    return {"win_rate": 100 * float(np.mean(kept)), "standard_error": 100 * _sem(kept),
            "n_wins": sum(k > 0.5 for k in kept), "n_wins_base": sum(k < 0.5 for k in kept), "n_draws": n_draws,
            "n_total": len(kept), "discrete_win_rate": 100 * float(np.mean(discrete))}


def _sem(values: Sequence[float]) -> float:
    """pandas ``Series.sem()``: std (ddof 1) / sqrt(n); NaN for fewer than two values."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


# --------------------------------------------------------------------------------- length-controlled GLM


def glm_rows(annotations: Sequence[Mapping], difficulty: Mapping[int, float] | None, *,
             not_gamed: bool = True) -> list[dict[str, float]]:
    """The GLM's rows for one model's annotations (``_get_featurized_data``): ``preference`` in [0, 1] (NaN
    when none), ``std_delta_len`` (baseline length minus the model's, in characters, over its std),
    ``instruction_difficulty`` (by ``index``; 0 when ``difficulty`` is None, for the minimal GLM), ``not_gamed``.
    """
    deltas = np.array([len(a["output_1"]) - len(a["output_2"]) for a in annotations], dtype=float)
    std = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0
    if not std > 0:
        raise ValueError("every output has the baseline's length difference: the length term is undefined")
    rows = []
    for a, delta in zip(annotations, deltas):
        p = a["preference"]
        pref = math.nan if p is None else (0.5 if p == 0 else p - 1)
        if difficulty is not None and a["index"] not in difficulty:
            raise ValueError(f"no instruction difficulty for index {a['index']}")
        rows.append({"index": a["index"], "preference": pref, "std_delta_len": delta / std,
                     "instruction_difficulty": 0.0 if difficulty is None else difficulty[a["index"]],
                     "not_gamed": 1.0 if not_gamed else 0.0})
    return rows


_COLUMNS = {"len": lambda r: math.tanh(r["std_delta_len"]), "difficulty": lambda r: r["instruction_difficulty"],
            "not_gamed": lambda r: r["not_gamed"]}


def _design(rows: Sequence[Mapping], features: Sequence[str]) -> np.ndarray:
    return np.array([[_COLUMNS[f](r) for f in features] for r in rows], dtype=float).reshape(len(rows), len(features))


def _continuous_log_loss(y_true, y_pred, true_prob, true_sample_weight=None) -> float:
    """``logloss_continuous``: the log loss against the preference probability (the duplicated rows' labels
    are turned back into it), each row weighted by its sample weight, averaged over rows."""
    target = np.where(np.asarray(y_true) == 1, true_prob, 1 - np.asarray(true_prob))
    pred = np.clip(np.asarray(y_pred), 1e-15, 1 - 1e-15)
    loss = target * np.log(pred) + (1 - target) * np.log(1 - pred)
    if true_sample_weight is not None:
        loss = loss * np.asarray(true_sample_weight)
    return float(-np.mean(loss))


def _fit_probability_targets(x: np.ndarray, p: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``fit_LogisticRegressionCV(is_ytrue_proba=True)``: each row twice (label 1 weighted ``p * w``, label 0
    weighted ``(1 - p) * w``), L1 logistic regression, C by grouped 5-fold CV on the continuous log loss.
    Returns the coefficients (no intercept)."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    n = len(p)
    x2 = np.concatenate([x, x])
    y2 = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    prob = np.concatenate([p, 1 - p])  # the official ``true_prob``: the label's own probability
    w2 = np.concatenate([weight, weight])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn's deprecation notices about its own defaults
        scorer = make_scorer(_continuous_log_loss, response_method="predict_proba", greater_is_better=False)
        scorer = scorer.set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=_N_SPLITS), scoring=scorer, random_state=123, dual=False,
                                     penalty="l1", solver="liblinear", n_jobs=None, fit_intercept=False)
        model.set_fit_request(sample_weight=True)
        model.fit(x2, y2, sample_weight=prob * w2, groups=groups, true_sample_weight=w2, true_prob=prob)
    return np.asarray(model.coef_[0], dtype=float)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -z))


def length_controlled_win_rate(annotations: Sequence[Mapping], difficulty: Mapping[int, float] | None = None,
                               gamed_rows: Sequence[Mapping] | None = None, *,
                               glm: str = "length_controlled_v1") -> dict[str, Any]:
    """``get_length_controlled_winrate`` for one model's annotations: ``length_controlled_winrate`` and
    ``lc_standard_error`` (x100) and the GLM ``weights`` by feature (the official weight-file columns).

    ``difficulty``: instruction index -> difficulty (needed by v1 and noreg); ``gamed_rows``: the gamed
    baselines' rows (:func:`read_gamed_rows`, needed by v1, whose ``lambda`` is 0.2).
    """
    if glm not in GLM_FORMULAS:
        raise ValueError(f"unknown GLM {glm!r}; known: {sorted(GLM_FORMULAS)}")
    spec = GLM_FORMULAS[glm]
    features = spec["features"]
    names = {"len": "np.tanh(std_delta_len)", "difficulty": "instruction_difficulty",
             "not_gamed": "not_gamed_baseline.astype(float)"}
    if len({a["generator_2"] for a in annotations}) != 1 or len({a["generator_1"] for a in annotations}) != 1:
        raise ValueError("the annotations must be of one model against one baseline")
    if annotations[0]["generator_1"] == annotations[0]["generator_2"]:
        return {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0, "weights": {names[f]: 0.0 for f in features}}
    if "difficulty" in features and difficulty is None:
        raise ValueError(f"GLM {glm!r} needs the instruction difficulty (instruction_difficulty.csv)")
    rows = glm_rows(annotations, difficulty if "difficulty" in features else None)
    train, weight = list(rows), [1.0] * len(rows)
    if spec["lambda"]:
        if not gamed_rows:
            raise ValueError(f"GLM {glm!r} regularizes towards the gamed baselines: give their rows (df_gamed.csv)")
        train = list(gamed_rows) + train
        weight = [spec["lambda"] / 2] * len(gamed_rows) + weight  # two gamed baselines share lambda
    keep = [i for i, r in enumerate(train) if not math.isnan(r["preference"])]
    if len(keep) < _N_SPLITS:
        raise ValueError(f"the LC win rate's {_N_SPLITS}-fold CV needs at least {_N_SPLITS} annotated rows, got {len(keep)}")
    coef = _fit_probability_targets(_design([train[i] for i in keep], features),
                                    np.array([train[i]["preference"] for i in keep]), np.array([weight[i] for i in keep]))
    test = [{**r, "std_delta_len": 0.0} for r in rows]  # what the model would get at the baseline's length
    predicted = _sigmoid(_design(test, features) @ coef)
    return {"length_controlled_winrate": 100 * float(predicted.mean()), "lc_standard_error": 100 * _sem(list(predicted)),
            "weights": {names[f]: float(c) for f, c in zip(features, coef)}}


def predict_win_rate(weights_model: Mapping[str, float], weights_baseline: Mapping[str, float],
                     difficulty: Sequence[float]) -> float:
    """``predict_winrate``: the LC win rate of one model over another baseline from their GLM weights (a
    row of the official weight files each): ``mean sigmoid(d_not_gamed + d_difficulty * difficulty)``, x100."""
    d_bias = weights_model["not_gamed_baseline.astype(float)"] - weights_baseline["not_gamed_baseline.astype(float)"]
    d_diff = weights_model["instruction_difficulty"] - weights_baseline["instruction_difficulty"]
    return 100 * float(_sigmoid(d_bias + d_diff * np.asarray(difficulty, dtype=float)).mean())


# ---------------------------------------------------------------------------------------------- the suite


def run_alpacaeval(ctx: SuiteContext) -> dict[str, Any]:
    """AlpacaEval 2 from annotation files: ``options.annotations`` (one ``annotations.json`` or a list, one
    per model), ``options.model_outputs`` (optional ``{model: model_outputs.json}`` for ``avg_length``; else
    the annotated outputs), ``options.instruction_difficulty`` and ``options.gamed`` (the dataset's
    ``instruction_difficulty.csv`` and ``df_gamed.csv``), ``options.glm`` (``length_controlled_v1``; without
    the files, ``length_controlled_minimal`` needs none). Metrics (percent, as the leaderboard):
    ``win_rate``, ``standard_error``, ``discrete_win_rate``, ``length_controlled_winrate``, ``lc_standard_error``,
    ``avg_length``. Judging new outputs with AlpacaEval's annotator is not done here."""
    if "annotations" not in ctx.options:
        raise ValueError(f"suite {ctx.name!r}: needs options.annotations (AlpacaEval annotations.json files)")
    paths = ctx.options["annotations"]
    paths = [paths] if isinstance(paths, str) else list(paths)
    difficulty = (read_instruction_difficulty(ctx.options["instruction_difficulty"])
                  if ctx.options.get("instruction_difficulty") else None)
    gamed = read_gamed_rows(ctx.options["gamed"]) if ctx.options.get("gamed") else None
    glm = ctx.options.get("glm", "length_controlled_v1")
    outputs = dict(ctx.options.get("model_outputs") or {})
    by_model: dict[str, dict[str, float]] = {}
    total = failed = 0
    for path in paths:
        annotations = read_alpaca_annotations(path)
        model = annotations[0]["generator_2"]
        stats = win_rate_stats([a["preference"] for a in annotations])
        lengths = ([len(o) for o in read_model_outputs(outputs[model])] if model in outputs
                   else [len(a["output_2"]) for a in annotations])
        stats["avg_length"] = int(np.mean(lengths))
        stats |= {k: v for k, v in length_controlled_win_rate(annotations, difficulty, gamed, glm=glm).items()
                  if k != "weights"}
        by_model[model] = stats
        for a in annotations:
            key = f"{model}/{a['index']}"
            total += 1
            failed += a["preference"] is None
            if key not in ctx.done:
                ctx.write({"id": key, "category": model, "failed": a["preference"] is None,
                           "preference": a["preference"], "len_output": len(a["output_2"]),
                           "len_baseline": len(a["output_1"])})
    main = ctx.model_name if ctx.model_name in by_model else (next(iter(by_model)) if len(by_model) == 1 else None)
    keys = ("win_rate", "standard_error", "discrete_win_rate", "length_controlled_winrate", "lc_standard_error",
            "avg_length")
    return {"metrics": {k: by_model[main][k] for k in keys} if main else {},
            "by_category": {m: {k: s[k] for k in keys} for m, s in by_model.items()},
            "num_samples": total, "num_failed": failed, "glm": glm}
