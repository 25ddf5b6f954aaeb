"""The embedded demo data, offline: Fashion-MNIST from idx files, else the Hub copy, else scikit-learn's digits.

`load_demo_dataset` always says which source it used, so a run's logs and model card never claim Fashion-MNIST
when the digits were trained on instead.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, load_dataset
from transformers.utils import logging

from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


FASHION_MNIST_ENV = "HFKD_FASHION_MNIST_DIR"
"""Environment variable that overrides where the Fashion-MNIST idx files are looked up."""


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's `dataset-fashion-mnist` package installs the idx files."""


FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"


FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


DEMO_DATASETS = {"fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "digits": "digits"}
"""Names accepted by `load_demo_dataset` (and `load_image_dataset`), mapped to their canonical name."""


# idx type codes (third magic byte) -> big-endian numpy dtype, see http://yann.lecun.com/exdb/mnist/
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


_TRUTHY = {"1", "true", "yes", "on"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (MNIST's format; gzipped if it ends in `.gz`) into a numpy array in native byte order.

    The header is two zero bytes, a type code, the number of dimensions, then one big-endian int32 per dimension:
    the magic number 2051 (0x00000803) means unsigned bytes in 3 dimensions, 2049 unsigned bytes in 1.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UsageError(
            f"{path} is not an idx file (magic bytes {raw[:4]!r}). Point {FASHION_MNIST_ENV} at a folder with the "
            "original idx files (optionally gzipped)."
        )
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise UsageError(
            f"{path}: header shape {shape} needs {expected} bytes of data, found {len(raw) - offset}. "
            "The file is truncated or corrupt; reinstall it (apt-get install --reinstall dataset-fashion-mnist)."
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    stem, _, ext = kind.partition("-")  # "images-idx3-ubyte" -> also try "images.idx3-ubyte"
    for name in (f"{prefix}-{kind}", f"{prefix}-{stem}.{ext}"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _grayscale_dataset(images: np.ndarray, labels: np.ndarray, names: list[str], description: str) -> Dataset:
    # Binary PGM (Netpbm P5) is lossless, opens in PIL as mode "L", and builds ~20x faster than PNG: the 70k
    # Fashion-MNIST images are ready in well under a second on every run.
    height, width = images.shape[1:]
    header = f"P5 {width} {height} 255\n".encode()
    encoded = [{"bytes": header + image.tobytes(), "path": None} for image in np.ascontiguousarray(images, np.uint8)]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict(
        {"image": encoded, "label": labels.astype(np.int64).tolist()},
        features=features,
        info=DatasetInfo(description=description, features=features),
    )


def fashion_mnist_arrays(
    folder: str | os.PathLike | None = None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str] | None:
    """Fashion-MNIST as arrays, `{"train": (images, labels), "test": (...)}` (uint8 (N, 28, 28), int (N,)), and its
    source, from the idx files of `folder` (see `load_fashion_mnist_idx`); `None` if any file is missing."""
    folder = Path(folder or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    files = {
        (split, kind): _find_idx(folder, prefix, kind)
        for split, prefix in (("train", "train"), ("test", "t10k"))
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    }
    if any(path is None for path in files.values()):
        return None
    arrays = {}
    for split in ("train", "test"):
        images = read_idx(files[split, "images-idx3-ubyte"])
        labels = read_idx(files[split, "labels-idx1-ubyte"])
        if images.ndim != 3 or len(images) != len(labels) or labels.min() < 0 or labels.max() > 9:
            raise UsageError(
                f"Fashion-MNIST {split} files in {folder} do not match: images {images.shape}, labels "
                f"{labels.shape} with values {labels.min()}..{labels.max()}. Reinstall dataset-fashion-mnist or "
                f"point {FASHION_MNIST_ENV} at intact files."
            )
        arrays[split] = (images, labels)
    return arrays, f"Debian dataset-fashion-mnist ({folder})"


def load_fashion_mnist_idx(folder: str | os.PathLike | None = None) -> tuple[DatasetDict, str] | None:
    """Fashion-MNIST ("train" 60000, "test" 10000 rows) and its source from idx files; `None` if any is missing.

    `folder` defaults to `$HFKD_FASHION_MNIST_DIR`, else `/usr/share/datasets/fashion-mnist` (Debian's
    `dataset-fashion-mnist`). Columns: `image` (28x28 grayscale) and `label` (`ClassLabel`, the 10 class names).
    """
    found = fashion_mnist_arrays(folder)
    if found is None:
        return None
    arrays, source = found
    splits = {
        split: _grayscale_dataset(images, labels, FASHION_MNIST_LABELS, source)
        for split, (images, labels) in arrays.items()
    }
    return DatasetDict(splits), source


def load_digits_dataset(*, eval_fraction: float = 0.2, seed: int = 42, split: bool = True) -> tuple[DatasetDict, str]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images) as an image dataset.

    The 0..16 intensities are scaled to 0..255 with no upscaling; labels are a `ClassLabel` named "0".."9", and
    the "test" split is a seeded split stratified by label (`split=False`: one "train" split of all the images).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise UsageError(
            "The 'digits' demo data needs scikit-learn: `pip install scikit-learn` (or `pip install hfkd[vision]`)."
        ) from err
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    source = "scikit-learn digits"
    dataset = _grayscale_dataset(images, digits.target, [str(i) for i in range(10)], source)
    if not split:
        return DatasetDict({"train": dataset}), source
    return dataset.train_test_split(test_size=eval_fraction, seed=seed, stratify_by_column="label"), source


def _hub_offline() -> bool:
    from datasets import config

    env = (os.environ.get(name, "").strip().lower() for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return any(value in _TRUTHY for value in env) or bool(getattr(config, "HF_HUB_OFFLINE", False))


def load_demo_dataset(
    name: str = "fashion-mnist",
    *,
    eval_fraction: float = 0.2,
    seed: int = 42,
    cache_dir: str | None = None,
    split_digits: bool = True,
) -> tuple[DatasetDict, str]:
    """Load the demo data and say where it came from.

    `"fashion-mnist"` (alias `"fashion_mnist"`) tries, in order: the local idx files (see
    `load_fashion_mnist_idx`), the Hub copy `zalando-datasets/fashion_mnist` (skipped when `HF_DATASETS_OFFLINE`
    or `HF_HUB_OFFLINE` is set), then falls back to `"digits"`, logging a warning. `"digits"` loads the
    scikit-learn digits directly.

    Args:
        name (`str`, *optional*, defaults to `"fashion-mnist"`): `"fashion-mnist"`, `"fashion_mnist"` or `"digits"`.
        eval_fraction (`float`, *optional*, defaults to `0.2`), seed (`int`, *optional*, defaults to `42`):
            The seeded, stratified "test" split of the digits (Fashion-MNIST has its own).
        split_digits (`bool`, *optional*, defaults to `True`): `False` leaves the digits in one "train" split
            (`load_image_dataset` then holds out the evaluation rows itself, and can record which).
        cache_dir (`str`, *optional*): `datasets` cache for the Hub copy.

    Returns:
        `tuple[DatasetDict, str]`: splits "train" and "test" with columns `image` (PIL grayscale) and `label`
        (`ClassLabel`), and a description of the source, e.g. `"Debian dataset-fashion-mnist
        (/usr/share/datasets/fashion-mnist)"`, `"Hub zalando-datasets/fashion_mnist"` or `"scikit-learn digits"`.
    """
    canonical = DEMO_DATASETS.get(name.lower())
    if canonical is None:
        raise UsageError(f"Unknown demo dataset {name!r}. Use one of {sorted(DEMO_DATASETS)}.")
    if canonical == "fashion-mnist":
        local = load_fashion_mnist_idx()
        if local is not None:
            return local
        folder = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
        if _hub_offline():
            logger.warning(
                f"Fashion-MNIST idx files not found in {folder} and the Hub is offline; using scikit-learn digits "
                f"instead. Install them with `apt-get install dataset-fashion-mnist` or set {FASHION_MNIST_ENV}."
            )
        else:
            try:
                hub = load_dataset(FASHION_MNIST_HUB_ID, cache_dir=cache_dir)
                return DatasetDict({"train": hub["train"], "test": hub["test"]}), f"Hub {FASHION_MNIST_HUB_ID}"
            except Exception as err:  # any network/Hub failure means: use the offline fallback
                logger.warning(
                    f"Fashion-MNIST idx files not found in {folder} and loading {FASHION_MNIST_HUB_ID} from the "
                    f"Hub failed ({type(err).__name__}: {err}); using scikit-learn digits instead."
                )
    return load_digits_dataset(eval_fraction=eval_fraction, seed=seed, split=split_digits)


SCENES_NAME, DETECTION_SCENES_NAME = "fashion-mnist-scenes", "fashion-mnist-detection-scenes"
"""The segmentation and detection demos' embedded scenes (`hfkd.tasks.*.demo`): composed here, on no Hub page."""


def card_dataset_name(dataset: str, source: str | None) -> str | None:
    """The dataset as the model card names it: the embedded Fashion-MNIST is the Hub's copy; digits (also when
    Fashion-MNIST fell back to them) and the demos' composed scenes have none."""
    if dataset in (SCENES_NAME, DETECTION_SCENES_NAME):
        return None
    canonical = DEMO_DATASETS.get(dataset.lower())
    if canonical is not None and "digits" in (source or ""):
        return None
    if canonical == "fashion-mnist":
        return FASHION_MNIST_HUB_ID
    return None if canonical == "digits" else dataset
