"""Small local datasets to stream in tests: parquet files (one shard each) and an image folder.

Every training row carries its position in the map-style order in a `row` column (the parquet files in name
order), so that tests can tell which rows a stream gave.
"""

import io
import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

CLASSES = ["ant", "bee", "cat"]


def _png(rng: np.random.Generator, size: tuple[int, int] = (20, 24)) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_rows(n: int, *, seed: int, unlabelled_every: int | None = None) -> Dataset:
    """`n` rows of random PNG images with labels 0, 1, 2, ... and `row` = position; every `unlabelled_every`-th
    row is labelled -1."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    if unlabelled_every:
        labels = [-1 if i % unlabelled_every == unlabelled_every - 1 else label for i, label in enumerate(labels)]
    features = Features({"image": Image(), "label": ClassLabel(names=CLASSES), "row": Value("int64")})
    images = [{"bytes": _png(rng), "path": f"{i:03d}.png"} for i in range(n)]
    return Dataset.from_dict({"image": images, "label": labels, "row": list(range(n))}, features=features)


def write_parquet_dataset(root: Path, *, files: int = 4, rows_per_file: int = 12, eval_rows: int = 9,
                          unlabelled_every: int | None = None) -> Path:  # fmt: skip
    """`root/data/train-0000k-of-0000n.parquet` (one shard per file) and one validation file."""
    train = image_rows(files * rows_per_file, seed=0, unlabelled_every=unlabelled_every)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        part = train.select(range(k * rows_per_file, (k + 1) * rows_per_file))
        part.to_parquet(str(data / f"train-{k:05d}-of-{files:05d}.parquet"))
    image_rows(eval_rows, seed=1).to_parquet(str(data / "validation-00000-of-00001.parquet"))
    return root


def write_image_folder(root: Path, *, per_class: int = 4, eval_per_class: int = 2) -> Path:
    """`root/<split>/<class>/<i>.png`."""
    rng = np.random.default_rng(2)
    for split, count in (("train", per_class), ("validation", eval_per_class)):
        for name in CLASSES:
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(count):
                (root / split / name / f"{i}.png").write_bytes(_png(rng))
    return root
