"""Several augmented copies of each training image per epoch (`distill_views_per_image`), and where they go.

Two references train this way. StreamLined's CIFAR-100 driver joins two copies of the training set, one with crop and
flip and one with FixMatch's RandAugment on top (`ConcatDataset([weak, strong])`), and shuffles the concatenation:
an epoch is twice as long ("concat"). DeiT's repeated augmentation (`RASampler`, facebookresearch/deit samplers.py)
shows each image 3 times on consecutive processes, with the epoch length kept ("repeated").

One mechanism serves both:

- `expand_views(dataset, views)`: the training set `views` times over, copy-major (row `c · N + i` is copy `c` of
  image `i`), each row carrying its copy number in `view_index`; the batch transform (`TransformFn.for_copy`) gives
  each copy its own pipeline (`distill_view_augments`) and its own stream of random draws (`copy_stream`), so each
  copy is an independent draw, deterministic per (seed, epoch, index, copy). A plain shuffle over these rows is
  StreamLined's epoch.
- `RepeatedViewsSampler`: RASampler's placement of the copies across processes, written as the one global order that
  Accelerate's batch sharding (process r takes batches r, r + W, ...) turns into what RASampler gives each process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from torch.utils.data import Sampler

from hfkd.data.batch import SAMPLE_INDEX
from hfkd.utils.errors import UsageError

VIEW_INDEX = "view_index"
"""The column of an expanded training set that numbers each row's copy of its image (0 .. views - 1)."""


VIEW_PLACEMENTS = ("concat", "repeated")
"""Where the copies go: "concat" shuffles all of them into an epoch `views` times as long (StreamLined);
"repeated" places them on consecutive processes and keeps the epoch's length (DeiT's RASampler)."""


RA_BLOCK = 256
"""RASampler keeps `len // 256 * 256` images' worth of samples per epoch, split among the processes."""


def copy_stream(copy: int, strong: bool = False) -> int:
    """The `sample_seed` stream of copy `copy` of an image (its strong view's with `strong`): 2c and 2c + 1, so that
    copy 0 draws as a run without copies does (stream 0, and 1 for MLKD's strong view)."""
    return 2 * int(copy) + int(strong)


def _transform_of(dataset: Any) -> Any:
    """The batch transform `set_transform` put on a `datasets.Dataset` (None without one)."""
    format_ = getattr(dataset, "format", None) or {}
    return (format_.get("format_kwargs") or {}).get("transform") if format_.get("type") == "custom" else None


def expand_views(dataset: Any, views: int) -> Any:
    """`dataset` with `views` copies of every row, copy-major, each row's copy number in `VIEW_INDEX`, and the same
    batch transform; `views=1` (or no dataset) returns it as it is.

    The transform must draw each copy itself (`TransformFn.for_copy`, from `make_transform_fn`): a dataset of
    precomputed tensors, a transform of another kind or a stream would show the same pixels `views` times, and is
    refused. The rows need a `sample_index` (`add_sample_index`), which seeds each copy's draws. The copies share the
    dataset's Arrow table (no image is copied); a dataset with an indices mapping is flattened first.
    """
    if views == 1 or dataset is None:
        return dataset
    if not isinstance(dataset, Dataset):
        raise UsageError(
            f"distill_views_per_image={views} draws copies of the rows of a map-style datasets.Dataset; this training "
            f"set is a {type(dataset).__name__} (a stream cannot be read by index): drop --views_per_image or "
            "--streaming."
        )
    transform = _transform_of(dataset)
    if not callable(getattr(transform, "for_copy", None)):
        raise UsageError(
            f"distill_views_per_image={views} needs a training transform that draws each copy of an image itself "
            "(hfkd.data.make_transform_fn, set with set_image_transform); this dataset has "
            f"{'none' if transform is None else type(transform).__name__}, so its copies would all be the same pixels."
        )
    if SAMPLE_INDEX not in dataset.column_names:
        raise UsageError(
            f"distill_views_per_image={views}: each copy's random draws are seeded by the row's `{SAMPLE_INDEX}`; add "
            "it with hfkd.data.add_sample_index(dataset) before set_image_transform."
        )
    if VIEW_INDEX in dataset.column_names:
        raise UsageError(f"The training set already has a {VIEW_INDEX!r} column: it was expanded once already.")
    plain = dataset.with_format()
    numbers = [np.full(len(plain), copy, dtype=np.int64) for copy in range(views)]
    expanded = concatenate_datasets([plain.add_column(VIEW_INDEX, number) for number in numbers])
    expanded.set_transform(transform)
    return expanded


class RepeatedViewsSampler(Sampler[int]):
    """DeiT's repeated augmentation (`RASampler`) over an `expand_views` training set, as one global order for a
    dataloader that Accelerate shards by batches.

    Each epoch RASampler permutes the N images (a generator seeded with the epoch; here `seed + epoch`, the same
    with seed 0), repeats each `views` times in a row ([a, a, a, b, b, b, ...]), pads the list with its head to a
    multiple of the W processes, and gives process r the items r, r + W, r + 2W, ... (the copies of an image land on
    consecutive processes), of which it keeps the first `(N // 256 · 256) // W`: the epoch keeps about N samples in
    all. The k-th occurrence of an image is its copy k (row `k · N + i`). Each process then batches its share with
    `drop_last` (DeiT's loader), so the epoch has `(N // 256 · 256) // W // batch_size` steps.

    Accelerate gives process r the global batches r, r + W, ... (`BatchSamplerShard`, `split_batches` off), so this
    sampler yields batch j of process 0, batch j of process 1, ..., for j = 0, 1, ...: after sharding each process
    sees exactly its RASampler share. The order depends only on (seed, epoch), so a resumed run skips to the same
    remaining batches. One process (W = 1) gets RASampler's order for one replica: its copies in a row.

    Args:
        num_images (`int`): N, the images before expansion.
        views (`int`): copies per image (DeiT: 3).
        world_size (`int`): W, the processes.
        batch_size (`int`): the per-process batch.
        seed (`int`, *optional*, defaults to 0): added to the epoch to seed the permutation.
    """

    def __init__(self, num_images: int, views: int, world_size: int, batch_size: int, seed: int = 0) -> None:
        for name, value in (("num_images", num_images), ("views", views), ("world_size", world_size),
                            ("batch_size", batch_size)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"RepeatedViewsSampler needs {name} >= 1, got {value!r}.")
        self.num_images, self.views, self.world_size, self.batch_size = num_images, views, world_size, batch_size
        self.seed, self.epoch = int(seed), 0
        self.per_process = (num_images // RA_BLOCK * RA_BLOCK) // world_size
        self.batches = self.per_process // batch_size
        if self.batches == 0:
            raise UsageError(
                f"--view_placement repeated keeps RASampler's epoch, (N // 256 * 256) // processes = "
                f"{self.per_process} samples per process for N = {num_images} images on {world_size} process(es): "
                f"not one batch of "
                f"{batch_size}. Use --view_placement concat, a smaller batch or more images."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def process_rows(self) -> list[list[int]]:
        """Each process's rows of this epoch, in order: RASampler's share of process r, as expanded rows."""
        n, views, world = self.num_images, self.views, self.world_size
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        images = torch.randperm(n, generator=generator).repeat_interleave(views)
        rows = torch.arange(views).repeat(n) * n + images  # the k-th occurrence of image i is its copy k
        total = math.ceil(n * views / world) * world
        rows = torch.cat([rows, rows[: total - len(rows)]])
        return [rows[rank:total:world][: self.per_process].tolist() for rank in range(world)]

    def __iter__(self) -> Iterator[int]:
        shares, size = self.process_rows(), self.batch_size
        for batch in range(self.batches):
            for share in shares:
                yield from share[batch * size : (batch + 1) * size]

    def __len__(self) -> int:
        return self.batches * self.batch_size * self.world_size


def views_sampler(
    placement: str, views: int, num_images: int, *, world_size: int, batch_size: int, seed: int = 0
) -> RepeatedViewsSampler | None:
    """The training sampler that `placement` needs over an `expand_views` set of `num_images` images: a
    `RepeatedViewsSampler` for "repeated" copies, None otherwise (the Trainer's shuffle: with copies, over all of
    them, StreamLined's epoch)."""
    if placement not in VIEW_PLACEMENTS:
        raise UsageError(f"--view_placement must be one of {', '.join(VIEW_PLACEMENTS)}, got {placement!r}.")
    if views == 1 or placement != "repeated":
        return None
    return RepeatedViewsSampler(num_images, views, world_size, batch_size, seed=seed)
