"""Merge methods as pure functions over tensors (report section 2.4).

The report merges the best checkpoints of different domains to balance the "seesaw effect" (gains in one
domain, losses in another) and finds Model Stock best overall. Every method here maps one tensor of a base
model ``θ_base`` and the same tensor of N fine-tuned models ``θ_1..θ_N`` to one merged tensor; the offsets
``τ_i = θ_i − θ_base`` are the "task vectors". All arithmetic is in whatever dtype the inputs have (the
streaming merge in :mod:`novalign.merge.merge` hands in fp32).

Two layers:

* Plain functions (:func:`linear`, :func:`task_arithmetic`, :func:`ties`, :func:`model_stock`) on whole
  tensors: the maths, with the formula and paper in each docstring.
* :class:`MergeMethod` objects that split a method into ``statistics`` (quantities of the *whole* tensor:
  TIES' trim thresholds, Model Stock's interpolation ratio) and ``combine`` (elementwise, so it runs on any
  row slice). The streaming merge uses this split to process a 150k-row embedding a few MiB at a time.
  Each method also declares what it needs (a base model, how many models, whether weights mean anything),
  so validation asks the type instead of comparing strings.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

__all__ = [
    "linear",
    "task_arithmetic",
    "ties",
    "keep_count",
    "trim_threshold",
    "ties_combine",
    "model_stock",
    "offset_gram",
    "model_stock_ratio",
    "interpolate",
    "TensorChunks",
    "WholeTensors",
    "MergeMethod",
    "Linear",
    "TaskArithmetic",
    "Ties",
    "ModelStock",
    "METHODS",
]


# ---------------------------------------------------------------------------------------------- Linear


def linear(models: Sequence[Tensor], weights: Sequence[float], *, normalize: bool = True) -> Tensor:
    """Weighted average of the models ("model soup").

    ``θ = Σ_i w_i θ_i / Σ_i w_i`` (``normalize=True``) or ``θ = Σ_i w_i θ_i`` (``normalize=False``).

    Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
    without increasing inference time" (arXiv:2203.05482). No base model is involved.

    Raises:
        ValueError: if ``normalize`` and the weights sum to zero.
    """
    _check_weights(models, weights)
    total = math.fsum(weights)
    if normalize and total == 0:
        raise ValueError("linear merge with normalize=True needs weights that do not sum to zero")
    out = models[0] * weights[0]
    for theta, w in zip(models[1:], weights[1:]):
        out.add_(theta, alpha=w)
    return out.div_(total) if normalize else out


# ---------------------------------------------------------------------------------------------- Task Arithmetic


def task_arithmetic(base: Tensor, models: Sequence[Tensor], weights: Sequence[float], *, scale: float = 1.0) -> Tensor:
    """Add the weighted task vectors to the base.

    ``θ = θ_base + λ · Σ_i w_i (θ_i − θ_base)``, with ``λ = scale``.

    Ilharco et al. 2023, "Editing models with task arithmetic" (ICLR 2023, arXiv:2212.04089). A negative
    ``w_i`` subtracts a task ("forgetting by negation").
    """
    _check_weights(models, weights)
    out = base.clone()
    for theta, w in zip(models, weights):
        out.add_(theta - base, alpha=scale * w)
    return out


# ---------------------------------------------------------------------------------------------- TIES


def keep_count(density: float, numel: int) -> int:
    """How many entries of a tensor TIES keeps: ``floor(density · numel)``, at least one.

    The three implementations differ here: mergekit's ``sparsify.magnitude`` keeps ``int(density · numel)``
    per tensor (floor); the TIES authors' ``topk_values_mask`` keeps the entries at or above the
    ``(numel − int(density · numel))``-th smallest magnitude of the whole flattened model, i.e.
    ``floor + 1``; novalign used ``ceil`` before. We follow mergekit (per tensor, floor), the tool most merged
    checkpoints come from, with two differences: the product is rounded to 6 decimals first, so float noise
    does not move a whole number (``0.29 · 100`` is ``28.999999999999996`` in floats: mergekit keeps 28, we
    keep 29; ``0.07 · 100`` is ``7.000000000000001``: ceil kept 8, we keep 7), and a tensor whose share rounds
    down to 0 keeps its single largest entry where mergekit stops with an assertion.
    """
    return max(1, math.floor(round(density * numel, 6)))


def trim_threshold(offset: Tensor, density: float) -> float:
    """The magnitude at or above which TIES keeps an entry of one task vector.

    ``k = keep_count(density, numel)`` entries survive: the threshold is the k-th largest ``|τ|``. Entries
    tied with it are all kept, so a little more than k may survive when magnitudes repeat (mergekit breaks
    such ties by sort order and keeps exactly k). ``density >= 1`` keeps everything (threshold 0).
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    numel = offset.numel()
    k = keep_count(density, numel)
    if numel == 0 or k >= numel:
        return 0.0
    # An in-place selection on one copy of |τ|: torch's kthvalue would also copy the values and make int64
    # indices, five times the tensor's size for the embedding of a large vocabulary.
    magnitudes = offset.detach().abs().float().flatten().numpy()
    magnitudes.partition(numel - k)
    return float(magnitudes[numel - k])


def ties_combine(
    base: Tensor, models: Sequence[Tensor], weights: Sequence[float], thresholds: Sequence[float], *, scale: float = 1.0
) -> Tensor:
    """TIES' elect-and-merge step, elementwise, given each task vector's trim threshold.

    With ``τ̂_i = τ_i · [|τ_i| ≥ thr_i]`` (trim), ``γ = sign(Σ_i w_i τ̂_i)`` (elect), and the agreeing set
    ``A = {i : τ̂_i ≠ 0, sign(τ̂_i) = γ}``::

        θ = θ_base + λ · Σ_{i∈A} w_i τ̂_i / Σ_{i∈A} w_i        (0 where A is empty)

    With all ``w_i = 1`` this is the paper's disjoint mean ``(1/|A|) Σ_{i∈A} τ̂_i``.
    """
    _check_weights(models, weights)
    shape = (len(models),) + (1,) * base.dim()
    w = torch.tensor(weights, dtype=base.dtype).view(shape)
    offsets = torch.stack([theta - base for theta in models])  # [N, *shape]
    thr = torch.tensor(thresholds, dtype=base.dtype).view(shape)
    trimmed = torch.where(offsets.abs() >= thr, offsets, torch.zeros((), dtype=base.dtype))
    del offsets
    elected = torch.sign((w * trimmed).sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    numerator = torch.where(agree, w * trimmed, torch.zeros((), dtype=base.dtype)).sum(0)
    denominator = torch.where(agree, w, torch.zeros((), dtype=base.dtype)).sum(0)
    merged = torch.where(denominator > 0, numerator / denominator.clamp_min(torch.finfo(base.dtype).tiny), 0.0)
    return base + scale * merged


def ties(
    base: Tensor, models: Sequence[Tensor], weights: Sequence[float], *, density: float = 0.2, scale: float = 1.0
) -> Tensor:
    """TIES-Merging: trim, elect sign, disjoint merge.

    1. Trim: keep the ``density`` fraction of largest-magnitude entries of each ``τ_i = θ_i − θ_base``
       (:func:`trim_threshold`), zero the rest.
    2. Elect: per entry, the sign of the weighted sum of the trimmed task vectors.
    3. Disjoint merge: average only the entries that agree with the elected sign (:func:`ties_combine`),
       then ``θ = θ_base + λ · τ_merged``.

    Yadav et al. 2023, "TIES-Merging: Resolving interference when merging models" (NeurIPS 2023,
    arXiv:2306.01708); the paper keeps the top 20 % (``density=0.2``).
    """
    thresholds = [trim_threshold(theta - base, density) for theta in models]
    return ties_combine(base, models, weights, thresholds, scale=scale)


# ---------------------------------------------------------------------------------------------- Model Stock


def offset_gram(base: Tensor, models: Sequence[Tensor]) -> Tensor:
    """``G[i, j] = <τ_i, τ_j>`` for the task vectors ``τ_i = θ_i − θ_base``, as float64 ``[N, N]``.

    Additive over any split of the entries, so the streaming merge sums it over row slices.
    """
    offsets = torch.empty((len(models), base.numel()), dtype=base.dtype)  # [N, numel]
    for i, theta in enumerate(models):
        torch.sub(theta.flatten(), base.flatten(), out=offsets[i])
    return (offsets @ offsets.T).double()


def model_stock_ratio(gram: Tensor) -> tuple[float, float]:
    """Model Stock's interpolation ratio ``t`` from the Gram matrix of the task vectors.

    ``cos θ`` is the mean over pairs ``i < j`` of ``G_ij / sqrt(G_ii G_jj)`` and
    ``t = N cos θ / (1 + (N − 1) cos θ)``.

    Degenerate cases, chosen so that the result is always a point between the base and the average:

    * all task vectors zero (every model equals the base): ``t = 0``, the base is returned;
    * a zero task vector has no direction: its pairs count as cosine 0 (orthogonal), which pulls ``t``
      towards the base in proportion to how many models did not move;
    * ``cos θ ≤ 0`` (the models disagree; the paper's geometry has no solution in ``[0, 1]``, and for
      ``cos θ ≤ −1/(N−1)`` the formula divides by zero or flips sign): ``t = 0``, the base. The formula is
      continuous there: ``t → 0`` as ``cos θ → 0⁺``;
    * ``t`` is clamped to ``[0, 1]`` against rounding (``cos θ`` a hair above 1).

    Returns:
        ``(t, cos θ)``.

    Raises:
        ValueError: fewer than two models, or a non-finite Gram matrix (NaN/inf weights).
    """
    n = gram.shape[0]
    if n < 2:
        raise ValueError(f"Model Stock needs at least two fine-tuned models besides the base, got {n}")
    if not torch.isfinite(gram).all():
        raise ValueError("Model Stock: the task vectors contain NaN or inf")
    sq_norms = gram.diagonal().tolist()
    if all(sq == 0 for sq in sq_norms):
        return 0.0, 0.0
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            # sqrt(|a|² |b|²) rather than |a| |b|: identical task vectors give cos θ = 1 and t = 1 exactly.
            denom = math.sqrt(sq_norms[i] * sq_norms[j])
            cosines.append(float(gram[i, j]) / denom if denom > 0 else 0.0)
    cos = min(1.0, sum(cosines) / len(cosines))
    if cos <= 0:
        return 0.0, cos
    t = n * cos / (1 + (n - 1) * cos)
    return min(1.0, max(0.0, t)), cos


def interpolate(base: Tensor, models: Sequence[Tensor], t: float) -> Tensor:
    """``θ = t · mean_i(θ_i) + (1 − t) · θ_base`` (``t = 0`` returns the base exactly)."""
    out = torch.mul(base, 1.0 - t)
    for theta in models:
        out.add_(theta, alpha=t / len(models))
    return out


def model_stock(base: Tensor, models: Sequence[Tensor]) -> Tensor:
    """Model Stock: interpolate between the base and the average of the fine-tuned models.

    ``cos θ`` = mean pairwise cosine between the task vectors ``τ_i = θ_i − θ_base``;
    ``t = N cos θ / (1 + (N − 1) cos θ)``; ``θ = t · mean_i(θ_i) + (1 − t) · θ_base``
    (:func:`model_stock_ratio` documents the degenerate cases).

    Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models" (ECCV 2024,
    arXiv:2403.19522). The models are assumed to lie on a thin shell around the ideal center; the ratio
    places the merged point as close to it as two or more models allow, per layer (here: per tensor).
    Unweighted by construction.
    """
    t, _ = model_stock_ratio(offset_gram(base, models))
    return interpolate(base, models, t)


# ---------------------------------------------------------------------------------------------- method objects


class TensorChunks(Protocol):
    """One tensor of every input, as the streaming merge (or :class:`WholeTensors`) provides it."""

    def chunks(self) -> Iterator[tuple[Tensor | None, list[Tensor]]]:
        """``(base_slice, [model_i_slice, ...])`` for consecutive row slices covering the tensor."""

    def offset(self, i: int) -> Tensor:
        """The whole task vector ``θ_i − θ_base`` of model ``i``."""


@dataclass
class WholeTensors:
    """:class:`TensorChunks` over tensors already in memory: one chunk, the whole tensor."""

    base: Tensor | None
    models: list[Tensor]

    def chunks(self) -> Iterator[tuple[Tensor | None, list[Tensor]]]:
        yield self.base, self.models

    def offset(self, i: int) -> Tensor:
        assert self.base is not None
        return self.models[i] - self.base


@dataclass(frozen=True)
class MergeMethod:
    """A merge method with its parameters, split into whole-tensor ``statistics`` and elementwise ``combine``.

    Class attributes say what the method needs; the merge validates a config against them.
    """

    name: ClassVar[str]
    needs_base: ClassVar[bool] = True
    min_models: ClassVar[int] = 1
    uses_weights: ClassVar[bool] = True

    def statistics(self, tensors: TensorChunks) -> object:
        """Whole-tensor quantities ``combine`` needs (``None`` for purely elementwise methods)."""
        return None

    def combine(self, base: Tensor | None, models: list[Tensor], stats: object) -> Tensor:
        raise NotImplementedError

    def __call__(self, base: Tensor | None, models: list[Tensor]) -> Tensor:
        """Merge whole tensors (what the streaming merge does chunk by chunk)."""
        return self.combine(base, models, self.statistics(WholeTensors(base, models)))


@dataclass(frozen=True)
class Linear(MergeMethod):
    weights: tuple[float, ...]
    normalize: bool = True
    name: ClassVar[str] = "linear"
    needs_base: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.normalize and math.fsum(self.weights) == 0:
            raise ValueError("linear merge with normalize=true needs weights that do not sum to zero")

    def combine(self, base, models, stats):
        return linear(models, self.weights, normalize=self.normalize)


@dataclass(frozen=True)
class TaskArithmetic(MergeMethod):
    weights: tuple[float, ...]
    scale: float = 1.0
    name: ClassVar[str] = "task_arithmetic"

    def combine(self, base, models, stats):
        return task_arithmetic(base, models, self.weights, scale=self.scale)


@dataclass(frozen=True)
class Ties(MergeMethod):
    weights: tuple[float, ...]
    density: float = 0.2
    scale: float = 1.0
    name: ClassVar[str] = "ties"

    def __post_init__(self) -> None:
        if any(w <= 0 for w in self.weights):
            raise ValueError(f"ties needs positive weights (the sign election assumes them), got {list(self.weights)}")
        if not 0 < self.density <= 1:
            raise ValueError(f"ties density must be in (0, 1], got {self.density}")

    def statistics(self, tensors: TensorChunks) -> list[float]:
        # The trim threshold is a k-th largest magnitude over the whole task vector: one model at a time.
        return [trim_threshold(tensors.offset(i), self.density) for i in range(len(self.weights))]

    def combine(self, base, models, stats):
        return ties_combine(base, models, self.weights, stats, scale=self.scale)


@dataclass(frozen=True)
class ModelStock(MergeMethod):
    name: ClassVar[str] = "model_stock"
    min_models: ClassVar[int] = 2
    uses_weights: ClassVar[bool] = False

    def statistics(self, tensors: TensorChunks) -> float:
        gram = None
        for base, models in tensors.chunks():
            part = offset_gram(base, models)
            gram = part if gram is None else gram + part
            del base, models  # let this slice go before the next one is read
        t, _ = model_stock_ratio(gram)
        return t

    def combine(self, base, models, stats):
        return interpolate(base, models, stats)


METHODS: dict[str, type[MergeMethod]] = {m.name: m for m in (Linear, TaskArithmetic, Ties, ModelStock)}


def _check_weights(models: Sequence[Tensor], weights: Sequence[float]) -> None:
    if len(models) == 0:
        raise ValueError("nothing to merge: no models")
    if len(weights) != len(models):
        raise ValueError(f"{len(models)} models but {len(weights)} weights")
