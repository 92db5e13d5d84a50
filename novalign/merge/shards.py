"""Sharded safetensors checkpoints, read and written a slice of one tensor at a time.

Reading: :class:`Checkpoint` maps every tensor name to its shard through the model's own
``model.safetensors.index.json`` (or the single ``model.safetensors``), so models that shard differently
merge together. Headers are parsed up front (names, dtypes, shapes) without touching any weights; data is
read with ``safetensors.safe_open``, whose tensors are zero-copy views of a memory map. A file page counts
towards the process's RSS only while a tensor that maps it is alive, so reading row slices and dropping them
keeps the resident set at a few slices, not a model.

Writing: :class:`ShardWriter` writes shards that are planned in advance (:func:`plan_shards`: greedy, a new
shard when the next tensor would pass ``max_shard_size``). Because every output name, dtype and shape is
known before the first byte, each shard's header is written first and the tensors' bytes are appended as
they are computed, slice by slice: no shard is ever assembled in memory.
The layout is the safetensors format: an 8-byte little-endian header length, a JSON header padded with
spaces to a multiple of 8 bytes, then the tensors' bytes back to back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open

__all__ = [
    "SAFE_DTYPES",
    "TensorInfo",
    "Checkpoint",
    "CheckpointError",
    "OutputTensor",
    "plan_shards",
    "ShardWriter",
    "parse_size",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

SAFE_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in SAFE_DTYPES.items()}


class CheckpointError(ValueError):
    """A model directory whose weights cannot be read as safetensors; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the shard's header."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # start of its bytes in the file's data section (reading order)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100 * 2**20:
                raise CheckpointError(f"{path}: not a safetensors file (header length {size})")
            return json.loads(f.read(size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the safetensors header ({exc})") from exc


class Checkpoint:
    """The weights of one Hugging Face model directory: names, dtypes, shapes, and sliced reads."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory).expanduser()
        if not self.dir.is_dir():
            raise CheckpointError(f"model directory {str(self.dir)!r} does not exist (only local paths are supported)")
        self.tensors: dict[str, TensorInfo] = {}
        for shard, names in self._shards().items():
            header = read_header(shard)
            header.pop("__metadata__", None)
            for name in names if names is not None else sorted(header):
                if name not in header:
                    raise CheckpointError(f"{shard}: tensor {name!r} is listed in {INDEX_FILE} but not in this shard")
                entry = header[name]
                if entry["dtype"] not in SAFE_DTYPES:
                    raise CheckpointError(f"{shard}: tensor {name!r} has dtype {entry['dtype']}, which novalign "
                                          f"cannot merge (supported: {', '.join(SAFE_DTYPES)})")
                self.tensors[name] = TensorInfo(
                    name, shard, SAFE_DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"][0]
                )

    def _shards(self) -> dict[Path, list[str] | None]:
        """shard path -> the tensor names the index puts there (``None``: all of a single file)."""
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from exc
            shards: dict[Path, list[str]] = {}
            for name, file in weight_map.items():
                shards.setdefault(self.dir / file, []).append(name)
            for shard in shards:
                if not shard.is_file():
                    raise CheckpointError(f"{shard}: shard listed in {index} is missing")
            return dict(sorted(shards.items()))
        single = self.dir / SINGLE_FILE
        if single.is_file():
            return {single: None}
        hint = ""
        if any(self.dir.glob("*.bin")) or any(self.dir.glob("*.pt")):
            hint = (" It holds PyTorch .bin weights: re-save them as safetensors with "
                    "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir).")
        raise CheckpointError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE}.{hint}")

    def names_in_file_order(self) -> list[str]:
        """Tensor names in the order their bytes sit on disk (sequential reads)."""
        return sorted(self.tensors, key=lambda n: (str(self.tensors[n].file), self.tensors[n].offset))

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` (rows ``[start, stop)`` of its first dimension, or all of it).

        The result is a read-only view of the file's memory map: it costs memory only while it is alive
        and must not be modified in place.
        """
        info = self.tensors[name]
        with safe_open(str(info.file), framework="pt") as f:
            return f.get_tensor(name) if rows is None else f.get_slice(name)[rows[0]:rows[1]]


# ---------------------------------------------------------------------------------------------- writing


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """``5_000_000``, ``"500MB"``, ``"2GiB"`` -> bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", size)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(f"cannot read size {size!r}; write e.g. 500MB, 5GB or 2GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(tensors: list[OutputTensor], max_shard_size: int) -> list[list[OutputTensor]]:
    """Greedy, in order: start a new shard when the next tensor would push this one past ``max_shard_size``
    (a single larger tensor gets a shard of its own)."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    """transformers' names: ``model.safetensors`` alone, else ``model-00001-of-00003.safetensors``..."""
    if num_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


class ShardWriter:
    """Write planned shards tensor by tensor, slice by slice, plus ``model.safetensors.index.json``.

    Call :meth:`write` with consecutive slices (along dim 0) of each tensor, in plan order (a zero-size
    tensor: one empty slice), then :meth:`finish`. A shard's file is opened, and its header written, when its
    first tensor arrives, and closed after its last tensor's last byte.
    """

    def __init__(self, out_dir: Path, shards: list[list[OutputTensor]]):
        self.out_dir = out_dir
        self.shards = shards
        self.files = shard_file_names(len(shards))
        self._shard = 0  # index of the shard being written
        self._tensor = 0  # index of the tensor being written within it
        self._bytes_left = shards[0][0].nbytes if shards and shards[0] else 0
        self._file: BinaryIO | None = None

    def write(self, name: str, data: torch.Tensor) -> None:
        if self._shard >= len(self.shards):
            raise AssertionError(f"shard writer: {name} is more than was planned")
        expected = self.shards[self._shard][self._tensor]
        if name != expected.name or data.dtype != expected.dtype:
            raise AssertionError(f"shard writer expected {expected.name} ({expected.dtype}), got {name} ({data.dtype})")
        if self._file is None:
            self._file = self._open_shard()
        raw = data.contiguous().reshape(-1).view(torch.uint8).numpy()
        if raw.nbytes > self._bytes_left:
            raise AssertionError(f"{name}: more bytes than its planned {expected.nbytes}")
        self._file.write(memoryview(raw))
        self._bytes_left -= raw.nbytes
        if self._bytes_left == 0:
            self._next_tensor()

    def _open_shard(self) -> BinaryIO:
        header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
        start = 0
        for t in self.shards[self._shard]:
            header[t.name] = {
                "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [start, start + t.nbytes]
            }
            start += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
        f = open(self.out_dir / self.files[self._shard], "wb")  # noqa: SIM115 (closed by _next_tensor / close)
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        return f

    def _next_tensor(self) -> None:
        self._tensor += 1
        if self._tensor == len(self.shards[self._shard]):
            self._file.close()
            self._file = None
            self._shard, self._tensor = self._shard + 1, 0
        if self._shard < len(self.shards):
            self._bytes_left = self.shards[self._shard][self._tensor].nbytes

    def finish(self) -> None:
        """Check every planned byte was written; write the index when there is more than one shard."""
        if self._shard != len(self.shards):
            missing = self.shards[self._shard][self._tensor].name
            raise AssertionError(f"shard writer finished before all planned tensors were written ({missing})")
        if len(self.shards) > 1:
            weight_map = {t.name: file for file, shard in zip(self.files, self.shards) for t in shard}
            total = sum(t.nbytes for shard in self.shards for t in shard)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def close(self) -> None:
        """Close a shard left open by an error (the caller throws the directory away)."""
        if self._file is not None:
            self._file.close()
            self._file = None
