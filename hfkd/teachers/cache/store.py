"""The teacher cache on disk: its layout, the views it replays, what it was built from, and checked reading.

Layout of a cache folder (format 2):

- `cache_config.json`: `CacheConfig`, i.e. the teacher (name, revision, commit, a hash of its weights), the data
  (dataset, config, splits, how many rows, a hash of the selected rows and one of their images), the seed of the
  views, the image settings of the teacher (size, mean, std, channels), epochs, top-k and the shard size. A cache of
  a teacher ensemble names the members `"a + b"`; its `teacher_info` holds `ensemble` (mode, normalised weights,
  temperature) and `members` (each member's record, weights hash and own image settings); the top-level image
  settings are the first member's;
- `selection.safetensors`: the selected rows (`train_rows`, `eval_rows`: positions in their split), so that a run
  trains on exactly the cache's images whatever its own seed;
- `epoch_XXXX/shard_XXXXX.safetensors`: for the samples [shard · shard_size, (shard + 1) · shard_size) of one epoch,
  `crops` (n, 4: top, left, height, width, int32), `flips` (n, uint8) and either `topk_indices` (n, k, int32) +
  `topk_probs` (n, k, float32) or `logits` (n, C, float32). The file's metadata key `hfkd` holds a hash of the
  build's settings and one of the tensors, so that a resumed build keeps only shards it can verify.

`TeacherCache` checks every shard of every epoch when it opens (present, readable, names, shapes, dtypes, sizes),
naming the file at fault, and reads with positioned reads only the rows asked for: a process touches only the rows
its batches need.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as TF

from hfkd.data.transforms import sample_seed
from hfkd.utils.errors import UsageError

CACHE_CONFIG = "cache_config.json"


SELECTION_FILE = "selection.safetensors"


CACHE_FORMAT = 2


SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


MAX_OPEN_SHARDS = 64


_DTYPES = {"F32": np.float32, "I32": np.int32, "U8": np.uint8, "I64": np.int64}


@dataclass
class CacheConfig:
    """What a cache holds and what it was built from (`cache_config.json`)."""

    teacher: str
    num_classes: int
    num_samples: int
    epochs: int
    top_k: int | None  # None: full logits
    seed: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shard_size: int = 10_000
    num_channels: int = 3
    teacher_info: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    format: int = CACHE_FORMAT

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.num_samples / self.shard_size))

    def shard_rows(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples)

    @property
    def ensemble(self) -> dict[str, Any] | None:
        """How an ensemble's logits were combined (mode, weights, temperature); None for a single teacher."""
        return self.teacher_info.get("ensemble")

    @property
    def members(self) -> list[dict[str, Any]]:
        """What was recorded of each teacher: a single teacher's `teacher_info`, or each ensemble member's in order."""
        return list(self.teacher_info.get("members", [])) if self.ensemble is not None else [self.teacher_info]

    @property
    def member_names(self) -> list[str]:
        """The teachers' names as recorded (one for a single teacher, in order for an ensemble)."""
        return [member.get("name_or_path", self.teacher) for member in self.members]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def sha256(self) -> str:
        """A hash of every setting: the shards of a build carry it, so that one of other settings is never kept."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CacheConfig:
        raw = dict(raw)
        raw["size"], raw["mean"], raw["std"] = tuple(raw["size"]), tuple(raw["mean"]), tuple(raw["std"])
        return cls(**raw)


def shard_path(folder: str, epoch: int, shard: int) -> str:
    return os.path.join(folder, f"epoch_{epoch:04d}", f"shard_{shard:05d}.safetensors")


def crop_params(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w) drawn with `generator`: torchvision's algorithm, made replayable."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*SCALE, generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    side = min(height, width)  # fallback: central crop, as torchvision does
    return (height - side) // 2, (width - side) // 2, side, side


def view_params(seed: int, epoch: int, index: int, height: int, width: int) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box and flip of sample `index` in `epoch`: a pure function of (seed, epoch, index)."""
    generator = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
    box = crop_params(height, width, generator)
    return box, bool(torch.rand(1, generator=generator).item() < 0.5)


def apply_view(
    image: torch.Tensor,
    box: tuple[int, int, int, int],
    flip: bool,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """uint8 (C, H, W) image -> normalised float view: crop `box`, resize to `size` (`interpolation`, a torchvision
    mode name), flip, normalise."""
    mode = TF.InterpolationMode(interpolation)
    view = TF.resized_crop(image, *box, size=list(size), interpolation=mode, antialias=True)
    if flip:
        view = TF.horizontal_flip(view)
    return TF.normalize(view.float() / 255.0, list(mean), list(std))


def logits_from_topk(indices: torch.Tensor, probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax puts `probs` on `indices` and spreads the remaining mass evenly over the other classes."""
    rest = (1.0 - probs.sum(-1, keepdim=True)).clamp_min(1e-12) / max(num_classes - indices.shape[-1], 1)
    full = rest.expand(*indices.shape[:-1], num_classes).clone()
    full.scatter_(-1, indices.long(), probs)
    return full.clamp_min(1e-12).log()


def rows_sha256(rows: list[int] | np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()


def content_sha256(dataset: Any, image_column: str, label_column: str | None, samples: int = 64) -> str:
    """A hash of up to `samples` evenly spaced rows of `dataset`: their encoded image bytes and labels. Two selections
    of different images (another dataset with as many rows, another order) differ here."""
    from datasets import Image

    feature = dataset.features.get(image_column)
    if isinstance(feature, Image):
        dataset = dataset.cast_column(image_column, Image(decode=False))
    digest = hashlib.sha256(str(len(dataset)).encode())
    for index in np.unique(np.linspace(0, len(dataset) - 1, num=min(samples, len(dataset))).round().astype(int)):
        row = dataset[int(index)]
        image = row[image_column]
        if isinstance(image, dict) and (image.get("bytes") or image.get("path")):
            data = image.get("bytes")
            if data is None:
                with open(image["path"], "rb") as f:
                    data = f.read()
        else:
            data = np.asarray(image).tobytes()
        digest.update(data)
        digest.update(str(row[label_column] if label_column else None).encode())
    return digest.hexdigest()


def read_header(path: str, *, metadata: bool = False) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (with its `__metadata__` if `metadata`) and where its data start; a
    ValueError naming the file if unreadable."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as err:
        raise UsageError(f"Teacher cache file {path} is unreadable ({type(err).__name__}: {err}).") from None
    if not isinstance(header, dict):
        raise UsageError(f"Teacher cache file {path} is unreadable (its header is not a JSON object).")
    if not metadata:
        header.pop("__metadata__", None)
    return header, 8 + length


def expected_tensors(config: CacheConfig, rows: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (safetensors dtype, shape) of one shard of `rows` samples."""
    tensors = {"crops": ("I32", (rows, 4)), "flips": ("U8", (rows,))}
    if config.top_k is None:
        tensors["logits"] = ("F32", (rows, config.num_classes))
    else:
        k = min(config.top_k, config.num_classes)
        tensors.update(topk_indices=("I32", (rows, k)), topk_probs=("F32", (rows, k)))
    return tensors


def check_shard(path: str, config: CacheConfig, rows: int) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """Check one shard file against what `config` promises; return name -> (dtype, shape, absolute offset)."""
    if not os.path.isfile(path):
        raise UsageError(f"Teacher cache file {path} is missing.")
    header, start = read_header(path)
    found = {}
    try:
        for name, (dtype, shape) in expected_tensors(config, rows).items():
            entry = header.get(name)
            if entry is None or entry["dtype"] != dtype or tuple(entry["shape"]) != shape:
                got = None if entry is None else (entry["dtype"], tuple(entry["shape"]))
                raise UsageError(f"Teacher cache file {path}: {name!r} should be {dtype} {shape}, found {got}.")
            found[name] = (dtype, shape, start + entry["data_offsets"][0])
        end = start + max(entry["data_offsets"][1] for entry in header.values())
    except (KeyError, TypeError, IndexError):
        raise UsageError(f"Teacher cache file {path} is unreadable (its header is malformed).") from None
    if os.path.getsize(path) < end:
        raise UsageError(f"Teacher cache file {path} is truncated ({os.path.getsize(path)} of {end} bytes).")
    return found


def _read_at(fd: int, offset: int, length: int, path: str) -> bytes:
    """`length` bytes of an open file from `offset`, without moving a shared file position (the file descriptor
    may be shared with forked dataloader workers)."""
    if hasattr(os, "pread"):
        data = os.pread(fd, length, offset)
    else:  # Windows: no pread; each process reads through its own descriptors
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, length)
    if len(data) != length:
        raise UsageError(f"Teacher cache file {path} is truncated (read {len(data)} of {length} bytes at {offset}).")
    return data


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique `rows` as [first, end) runs of consecutive rows."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks)]


class TeacherCache:
    """Read access to a teacher cache, checked when opened (see the module docstring).

    Rows are read with positioned reads of exactly the bytes asked for (consecutive rows in one read), never whole
    shards: under N processes each reads only the rows of its own batches. The `MAX_OPEN_SHARDS` files read last
    stay open.
    """

    def __init__(self, path: str) -> None:
        config_path = os.path.join(path, CACHE_CONFIG)
        if not os.path.isfile(config_path):
            raise UsageError(
                f"{path!r} is not a teacher cache (no {CACHE_CONFIG}); build one with `python -m hfkd.teacher_cache`"
                " (an interrupted build is finished by running the same command again)."
            )
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
        if raw.get("format") != CACHE_FORMAT:
            raise UsageError(
                f"{path!r} holds a teacher cache of format {raw.get('format', 1)}; this hfkd reads format "
                f"{CACHE_FORMAT}. Rebuild it with `python -m hfkd.teacher_cache`."
            )
        self.path, self.config = path, CacheConfig.from_dict(raw)
        self._layout = {
            (epoch, shard): check_shard(shard_path(path, epoch, shard), self.config, len(range(*rows)))
            for epoch in range(self.config.epochs)
            for shard, rows in ((s, self.config.shard_rows(s)) for s in range(self.config.num_shards))
        }
        self._files: OrderedDict[tuple[int, int], int] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Dataloader workers get a copy: files are reopened there, their descriptors are not pickled.
        return {**self.__dict__, "_files": OrderedDict()}

    def close(self) -> None:
        """Close the open shard files (reading again reopens them)."""
        files, self._files = self._files, OrderedDict()
        for fd in files.values():
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # also at interpreter exit, when `os` may be gone
            self.close()

    def selection(self) -> dict[str, list[int]] | None:
        """The cache's selected rows (`train_rows`, `eval_rows`), or None for a cache built from bare images."""
        path = os.path.join(self.path, SELECTION_FILE)
        if not os.path.isfile(path):
            return None
        return {name: tensor.tolist() for name, tensor in load_file(path).items()}

    def _file(self, epoch: int, shard: int) -> int:
        key = (epoch, shard)
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        if len(self._files) >= MAX_OPEN_SHARDS:
            os.close(self._files.popitem(last=False)[1])
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
        self._files[key] = os.open(shard_path(self.path, epoch, shard), flags)
        return self._files[key]

    def _rows(self, epoch: int, indices: np.ndarray, name: str) -> np.ndarray:
        # Epochs past the cached ones cycle over them, as FKD does.
        epoch = int(epoch) % self.config.epochs
        if indices.size and (indices.min() < 0 or indices.max() >= self.config.num_samples):
            raise IndexError(f"Sample index out of range for a teacher cache of {self.config.num_samples} samples.")
        dtype, shape, _ = self._layout[(epoch, 0)][name]
        dtype, row_shape = np.dtype(_DTYPES[dtype]), shape[1:]
        row_bytes = dtype.itemsize * math.prod(row_shape)
        out = np.empty((len(indices), *row_shape), dtype=dtype)
        shards, rows = np.divmod(indices, self.config.shard_size)
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            wanted = np.unique(rows[positions])
            offset = self._layout[(epoch, int(shard))][name][2]
            fd, path = self._file(epoch, int(shard)), shard_path(self.path, epoch, int(shard))
            chunks = [_read_at(fd, offset + a * row_bytes, (b - a) * row_bytes, path) for a, b in _runs(wanted)]
            block = np.frombuffer(b"".join(chunks), dtype=dtype).reshape(len(wanted), *row_shape)
            out[positions] = block[np.searchsorted(wanted, rows[positions])]
        return out

    def view(self, epoch: int, index: int) -> tuple[tuple[int, int, int, int], bool]:
        index = np.asarray([int(index)])
        crop = self._rows(epoch, index, "crops")[0]
        return tuple(int(v) for v in crop), bool(self._rows(epoch, index, "flips")[0])

    def teacher_logits(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.config.top_k is None:
            return torch.from_numpy(self._rows(epoch, index, "logits"))
        top_indices = torch.from_numpy(self._rows(epoch, index, "topk_indices"))
        top_probs = torch.from_numpy(self._rows(epoch, index, "topk_probs"))
        return logits_from_topk(top_indices, top_probs, self.config.num_classes)
