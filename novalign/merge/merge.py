"""``novalign merge``: merge checkpoints from a :class:`~novalign.config.MergeConfig`, streamed tensor by tensor.

The recipe (report section 2.4): take the best checkpoint of each domain, merge them, get a model whose
performance is balanced across domains. This module does the plumbing around the maths in
:mod:`novalign.merge.methods`:

1. **Validate before any work** (:func:`plan_merge`): the method's own needs (a base, how many models,
   weights), same architecture (``model_type``, ``architectures``, ``tie_word_embeddings``), the same tensor
   names, shapes and kinds of dtype, tokenizer compatibility (identical vocabulary files, or an explicit
   ``tokenizer_source``) and a free output path. Every error names the tensor or file.
2. **Stream** (:func:`merge_models`): for each tensor, in the order the reference model stores it, read row
   slices of it from every model (memory-mapped, never a whole model), compute in fp32, cast to the output
   dtype and append to the planned output shard. Methods whose maths needs the whole tensor first
   (Model Stock's cosine, TIES' thresholds) get a statistics pass over the same slices. Peak memory is a few
   slices of ``chunk_mb`` each (TIES: plus one whole task vector), whatever the model size.
3. **Publish atomically**: everything is written into ``.<name>.tmp-<pid>`` beside ``output_dir`` with the
   base's config, generation config, tokenizer and chat template, and renamed into place at the end. An
   interrupted merge never leaves a model at ``output_dir``; a killed one leaves only the hidden temp
   folder, which is safe to delete.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from novalign.config import MergeConfig, dump_config, load_config
from novalign.data.io import atomic_directory
from novalign.merge.methods import METHODS, Linear, MergeMethod, ModelStock, TaskArithmetic, Ties
from novalign.merge.shards import Checkpoint, CheckpointError, OutputTensor, ShardWriter, parse_size, plan_shards

__all__ = ["MergeError", "MergePlan", "MergeResult", "build_method", "plan_merge", "merge_models"]

# The architecture has to match for the tensors to mean the same thing; sizes are checked through shapes.
ARCH_KEYS = ("model_type", "architectures", "tie_word_embeddings")
# Files that define the vocabulary: identical bytes = the same token ids.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")
TOKENIZER_FILES = VOCAB_FILES + (
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
)
MODEL_FILES = ("config.json", "generation_config.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MergeError(ValueError):
    """A merge that cannot be done as configured; the message names the model, file or tensor."""


@dataclass
class MergePlan:
    """Everything :func:`merge_models` needs, checked: the inputs, the method and the output layout."""

    cfg: MergeConfig
    method: MergeMethod
    reference: Checkpoint  # supplies config, tensor order and 'auto' dtypes: the base, else the first model
    base: Checkpoint | None  # whose weights the method reads as θ_base; None for linear
    models: list[Checkpoint]
    tensors: list[OutputTensor]  # in write order
    max_shard_size: int  # bytes
    tokenizer_dir: Path | None
    output_dir: Path


@dataclass
class MergeResult:
    output_dir: Path
    num_tensors: int
    num_bytes: int
    seconds: float
    statistics: dict[str, object] = field(default_factory=dict)  # per tensor: Model Stock's t, TIES' thresholds


# ---------------------------------------------------------------------------------------------- validation


def build_method(cfg: MergeConfig) -> MergeMethod:
    """The configured method with its parameters, after checking what the method needs."""
    kind = METHODS[cfg.method]
    weights = tuple(m.weight for m in cfg.models)
    if len(cfg.models) < kind.min_models:
        raise MergeError(f"{cfg.method} needs at least {kind.min_models} model(s) under 'models', "
                         f"got {len(cfg.models)}")
    if kind.needs_base and cfg.base_model is None:
        raise MergeError(f"{cfg.method} needs base_model: it merges the offsets of the models from the base")
    if not kind.uses_weights and any(w != 1.0 for w in weights):
        raise MergeError(f"{cfg.method} averages the models uniformly and takes no weights; got {list(weights)}")
    try:
        if kind is Linear:
            return Linear(weights, normalize=cfg.normalize)
        if kind is TaskArithmetic:
            return TaskArithmetic(weights, scale=cfg.scale)
        if kind is Ties:
            return Ties(weights, density=cfg.density, scale=cfg.scale)
        return ModelStock()
    except ValueError as exc:
        raise MergeError(str(exc)) from None


def _read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise MergeError(f"{path}: missing, so {str(directory)!r} is not a model directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"{path}: unreadable ({exc})") from exc


def _check_architecture(reference: Checkpoint, others: list[Checkpoint]) -> None:
    ref_cfg = _read_config(reference.dir)
    for other in others:
        cfg = _read_config(other.dir)
        for key in ARCH_KEYS:
            if cfg.get(key) != ref_cfg.get(key):
                raise MergeError(
                    f"{other.dir / 'config.json'}: {key} = {cfg.get(key)!r}, but {reference.dir / 'config.json'} "
                    f"has {ref_cfg.get(key)!r}; only models of one architecture can be merged"
                )


def _check_tensors(reference: Checkpoint, others: list[Checkpoint]) -> None:
    ref = reference.tensors
    for other in others:
        missing = sorted(set(ref) - set(other.tensors))
        extra = sorted(set(other.tensors) - set(ref))
        if missing:
            raise MergeError(f"{other.dir}: tensor {missing[0]!r} is missing ({len(missing)} missing in all), "
                             f"it is in {ref[missing[0]].file}")
        if extra:
            raise MergeError(f"{other.dir}: tensor {extra[0]!r} is not in {reference.dir} ({len(extra)} extra in all)")
        for name, info in ref.items():
            theirs = other.tensors[name]
            if theirs.shape != info.shape:
                raise MergeError(f"tensor {name!r}: shape {list(theirs.shape)} in {theirs.file}, but "
                                 f"{list(info.shape)} in {info.file}")
            if theirs.dtype.is_floating_point != info.dtype.is_floating_point or (
                not info.dtype.is_floating_point and theirs.dtype != info.dtype
            ):
                raise MergeError(f"tensor {name!r}: dtype {theirs.dtype} in {theirs.file}, but {info.dtype} in "
                                 f"{info.file}; floating-point tensors of any precision merge (in fp32), others "
                                 "must match exactly")


def _vocab_fingerprint(directory: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in VOCAB_FILES
        if (directory / name).is_file()
    }


def _tokenizer_dir(cfg: MergeConfig, reference: Checkpoint, inputs: list[Checkpoint]) -> Path | None:
    """Whose tokenizer the merged model keeps, after checking the inputs agree (unless told explicitly)."""
    if cfg.tokenizer_source is not None:
        if cfg.tokenizer_source == "base":
            if cfg.base_model is None:
                raise MergeError("tokenizer_source is 'base' but no base_model is set")
            source = Path(cfg.base_model).expanduser()
        else:
            source = Path(cfg.tokenizer_source).expanduser()
        if not any((source / name).is_file() for name in TOKENIZER_FILES):
            raise MergeError(f"tokenizer_source {str(source)!r} holds no tokenizer files ({', '.join(VOCAB_FILES)})")
        return source
    with_vocab = [(c.dir, _vocab_fingerprint(c.dir)) for c in inputs]
    with_vocab = [(d, fp) for d, fp in with_vocab if fp]  # a checkpoint without tokenizer files has no say
    if not with_vocab:
        return None
    first_dir, first = with_vocab[0]
    for directory, fingerprint in with_vocab[1:]:
        for name in sorted(set(first) | set(fingerprint)):
            if first.get(name) != fingerprint.get(name):
                where = (f"{directory / name} differs from {first_dir / name}" if name in first and name in fingerprint
                         else f"{name} is in only one of {first_dir} and {directory}")
                raise MergeError(f"tokenizers differ: {where}. Merged embeddings only make sense over one "
                                 "vocabulary; if the files encode the same one (only settings differ), set "
                                 "tokenizer_source to 'base' or to the directory whose tokenizer to keep")
    return first_dir  # inputs start with the reference: its own tokenizer whenever it has one


def _check_output(cfg: MergeConfig, inputs: list[Checkpoint]) -> Path:
    out = Path(cfg.output_dir).expanduser().absolute()
    for c in inputs:
        if out.resolve() == c.dir.resolve() or out.resolve() in c.dir.resolve().parents:
            raise MergeError(f"output_dir {str(out)!r} is (or holds) the input model {str(c.dir)!r}; "
                             "write the merge elsewhere")
    if out.exists() and not cfg.overwrite:
        raise MergeError(f"output_dir {str(out)!r} already exists; set overwrite: true to replace it")
    return out


def plan_merge(cfg: MergeConfig) -> MergePlan:
    """Check everything that can be checked without reading weights, and lay out the output shards.

    Raises:
        MergeError: naming the model, file or tensor at fault.
    """
    method = build_method(cfg)
    try:
        models = [Checkpoint(m.path) for m in cfg.models]
        base = Checkpoint(cfg.base_model) if cfg.base_model is not None else None
    except CheckpointError as exc:
        raise MergeError(str(exc)) from None
    reference = base if base is not None else models[0]
    inputs = [reference] + [m for m in models if m is not reference]
    _check_architecture(reference, inputs[1:])
    _check_tensors(reference, inputs[1:])
    tokenizer_dir = _tokenizer_dir(cfg, reference, inputs)
    out = _check_output(cfg, inputs)
    tensors = []
    for name in reference.names_in_file_order():
        info = reference.tensors[name]
        dtype = DTYPES[cfg.dtype] if cfg.dtype != "auto" and info.dtype.is_floating_point else info.dtype
        tensors.append(OutputTensor(name, dtype, info.shape))
    try:
        max_shard = parse_size(cfg.max_shard_size)
    except ValueError as exc:
        raise MergeError(f"max_shard_size: {exc}") from None
    # Linear reads no base weights: a base given to it only supplies the config and tokenizer.
    return MergePlan(cfg, method, reference, base if method.needs_base else None, models, tensors, max_shard,
                     tokenizer_dir, out)


# ---------------------------------------------------------------------------------------------- streaming


class _StreamedTensor:
    """One tensor of every input, read a row slice at a time (implements ``methods.TensorChunks``).

    A tensor that fits in one slice is read once and kept for both passes (statistics, combine).
    """

    def __init__(self, name: str, shape: tuple[int, ...], base: Checkpoint | None, models: list[Checkpoint],
                 chunk_elems: int):
        self.name, self.shape, self.base, self.models = name, shape, base, models
        numel, rows = math.prod(shape), (shape[0] if shape else 1)
        if not shape or numel <= chunk_elems:
            self.ranges: list[tuple[int, int] | None] = [None]
        else:
            step = max(1, chunk_elems // max(1, numel // rows))
            self.ranges = [(r, min(r + step, rows)) for r in range(0, rows, step)]
        self._whole: tuple[torch.Tensor | None, list[torch.Tensor]] | None = None

    def _slice(self, rows: tuple[int, int] | None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        base = self.base.read(self.name, rows).float() if self.base is not None else None
        return base, [m.read(self.name, rows).float() for m in self.models]

    def chunks(self) -> Iterator[tuple[torch.Tensor | None, list[torch.Tensor]]]:
        if self.ranges == [None]:
            if self._whole is None:
                self._whole = self._slice(None)
            yield self._whole
            return
        for rows in self.ranges:
            yield self._slice(rows)

    def offset(self, i: int) -> torch.Tensor:
        if self.ranges == [None]:
            base, models = next(self.chunks())
            return models[i] - base
        delta = torch.empty(self.shape, dtype=torch.float32)
        for start, stop in self.ranges:
            delta[start:stop] = self.models[i].read(self.name, (start, stop)).float()
            delta[start:stop] -= self.base.read(self.name, (start, stop)).float()
        return delta


def _merge_tensor(plan: MergePlan, target: OutputTensor, writer: ShardWriter, chunk_elems: int) -> object:
    """Merge one tensor into ``writer``; returns the method's statistics for it."""
    if not plan.reference.tensors[target.name].dtype.is_floating_point:
        # Integer/bool buffers (position ids, masks) are not weights: keep the reference's.
        writer.write(target.name, plan.reference.read(target.name))
        return None
    view = _StreamedTensor(target.name, target.shape, plan.base, plan.models, chunk_elems)
    stats = plan.method.statistics(view)
    for base, models in view.chunks():
        writer.write(target.name, plan.method.combine(base, models, stats).to(target.dtype))
        del base, models  # let this slice go before the next one is read
    return stats


def _copy_side_files(plan: MergePlan, tmp: Path) -> None:
    """Config and generation config from the reference, tokenizer + chat template from the tokenizer source."""
    for name in MODEL_FILES:
        if (plan.reference.dir / name).is_file():
            shutil.copy2(plan.reference.dir / name, tmp / name)
    for path in plan.reference.dir.glob("*.py"):  # remote code named by config.auto_map
        shutil.copy2(path, tmp / path.name)
    if plan.cfg.dtype != "auto":
        config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = plan.cfg.dtype
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if plan.tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (plan.tokenizer_dir / name).is_file():
                shutil.copy2(plan.tokenizer_dir / name, tmp / name)
    (tmp / "merge_config.yaml").write_text(dump_config(plan.cfg), encoding="utf-8")


def merge_models(
    cfg: MergeConfig | str | os.PathLike[str],
    *,
    progress: Callable[[int, int, str], None] | None = None,
) -> MergeResult:
    """Merge the configured models into ``cfg.output_dir``, one tensor slice at a time.

    Args:
        cfg: A :class:`~novalign.config.MergeConfig` or the path of its YAML file.
        progress: Called as ``progress(done, total, tensor_name)`` after each tensor.

    Returns:
        The output directory, counts, wall time and per-tensor statistics (Model Stock's ``t``, TIES'
        thresholds).

    Raises:
        MergeError: when validation fails; nothing is written then.
    """
    if not isinstance(cfg, MergeConfig):
        cfg = load_config(MergeConfig, cfg)
    start = time.perf_counter()
    plan = plan_merge(cfg)
    chunk_elems = max(1, int(cfg.chunk_mb * 2**20) // 4)
    statistics: dict[str, object] = {}
    with atomic_directory(plan.output_dir) as tmp:
        writer = ShardWriter(tmp, plan_shards(plan.tensors, plan.max_shard_size))
        try:
            for done, target in enumerate(plan.tensors, 1):
                stats = _merge_tensor(plan, target, writer, chunk_elems)
                if stats is not None:
                    statistics[target.name] = stats
                if progress is not None:
                    progress(done, len(plan.tensors), target.name)
            writer.finish()
        finally:
            writer.close()
        _copy_side_files(plan, tmp)
    return MergeResult(
        output_dir=plan.output_dir,
        num_tensors=len(plan.tensors),
        num_bytes=sum(t.nbytes for t in plan.tensors),
        seconds=time.perf_counter() - start,
        statistics=statistics,
    )
