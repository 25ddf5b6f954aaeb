"""Offline distillation: run the teacher once, store its outputs per augmented view, train without it.

    python -m hfkd.teacher_cache --teacher <model> --dataset <data> --output_dir cache/ --epochs 100 --top_k 10

As in FKD (Shen & Xing, *A Fast Knowledge Distillation Framework for Visual Recognition*, ECCV 2022), each epoch's
random crop and flip of every training image is drawn up front from a seed, the teacher sees exactly that view,
and the cache stores the view's parameters with the teacher's top-k probabilities (or its full logits). Training
with `--teacher_cache_dir cache/` replays the same crops for the student and never runs the teacher.

Layout: `cache_config.json` (teacher, k, classes, image config, seed, epochs, samples) and one safetensors file
per epoch with `crops` (N, 4: top, left, height, width, int32), `flips` (N, bool as uint8) and either
`topk_indices` (N, k, int32) + `topk_probs` (N, k, float32) or `logits` (N, C, float32).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import functional as TF
from transformers import TrainerCallback

from .image_datasets import decode_image, detect_columns, load_image_dataset
from .models import load_image_classifier, load_image_processor, resolve_model_name
from .transforms import image_config_for_model

CACHE_CONFIG = "cache_config.json"
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@dataclass
class CacheConfig:
    teacher: str
    num_classes: int
    num_samples: int
    epochs: int
    top_k: int | None  # None: full logits
    seed: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


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
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 100_000_007 + index) % (2**63))
    box = crop_params(height, width, generator)
    return box, bool(torch.rand(1, generator=generator).item() < 0.5)


def apply_view(
    image: torch.Tensor,
    box: tuple[int, int, int, int],
    flip: bool,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 (C, H, W) image -> normalised float view: crop `box`, resize to `size`, flip, normalise."""
    view = TF.resized_crop(image, *box, size=list(size), antialias=True)
    if flip:
        view = TF.horizontal_flip(view)
    return TF.normalize(view.float() / 255.0, list(mean), list(std))


def logits_from_topk(indices: torch.Tensor, probs: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax puts `probs` on `indices` and spreads the remaining mass evenly over the other classes."""
    rest = (1.0 - probs.sum(-1, keepdim=True)).clamp_min(1e-12) / max(num_classes - indices.shape[-1], 1)
    full = rest.expand(*indices.shape[:-1], num_classes).clone()
    full.scatter_(-1, indices.long(), probs)
    return full.clamp_min(1e-12).log()


class TeacherCache:
    """Read access to a cache written by `build_teacher_cache`: per epoch, views and teacher logits by index."""

    def __init__(self, path: str) -> None:
        config_path = os.path.join(path, CACHE_CONFIG)
        if not os.path.isfile(config_path):
            raise ValueError(
                f"{path!r} is not a teacher cache (no {CACHE_CONFIG}); build one with hfkd.teacher_cache."
            )
        with open(config_path, encoding="utf-8") as f:
            raw = json.load(f)
        raw["size"], raw["mean"], raw["std"] = tuple(raw["size"]), tuple(raw["mean"]), tuple(raw["std"])
        self.path, self.config = path, CacheConfig(**raw)
        self._epochs: dict[int, dict[str, torch.Tensor]] = {}

    def epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        # Epochs past the cached ones cycle over them, as FKD does.
        key = int(epoch) % self.config.epochs
        if key not in self._epochs:
            self._epochs = {key: load_file(os.path.join(self.path, f"epoch_{key:04d}.safetensors"))}
        return self._epochs[key]

    def view(self, epoch: int, index: int) -> tuple[tuple[int, int, int, int], bool]:
        tensors = self.epoch(epoch)
        return tuple(int(v) for v in tensors["crops"][index]), bool(tensors["flips"][index])

    def teacher_logits(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        tensors = self.epoch(epoch)
        if "logits" in tensors:
            return tensors["logits"][indices]
        return logits_from_topk(
            tensors["topk_indices"][indices], tensors["topk_probs"][indices], self.config.num_classes
        )


@torch.no_grad()
def build_teacher_cache(
    teacher: torch.nn.Module,
    images: Any,
    output_dir: str,
    *,
    teacher_name: str,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    epochs: int = 1,
    top_k: int | None = 10,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> CacheConfig:
    """Run `teacher` once per (epoch, sample) view of `images` (a sequence of uint8 (C, H, W) tensors) and store
    the views with the teacher's top-k probabilities (full logits with `top_k=None`)."""
    from tqdm.auto import tqdm

    teacher = teacher.eval().to(device)
    os.makedirs(output_dir, exist_ok=True)
    num_classes = None
    total = len(images)
    for epoch in tqdm(range(epochs), desc="Teacher cache", disable=not progress):
        crops, flips, outputs = [], [], []
        for start in range(0, total, batch_size):
            batch, boxes, flags = [], [], []
            for index in range(start, min(start + batch_size, total)):
                image = images[index]
                box, flip = view_params(seed, epoch, index, image.shape[-2], image.shape[-1])
                batch.append(apply_view(image, box, flip, size, mean, std))
                boxes.append(box)
                flags.append(flip)
            logits = teacher(pixel_values=torch.stack(batch).to(device)).logits.float().cpu()
            num_classes = logits.shape[-1]
            outputs.append(logits)
            crops.append(torch.tensor(boxes, dtype=torch.int32))
            flips.append(torch.tensor(flags, dtype=torch.uint8))
        logits = torch.cat(outputs)
        tensors = {"crops": torch.cat(crops), "flips": torch.cat(flips)}
        if top_k is None:
            tensors["logits"] = logits.contiguous()
        else:
            probs, indices = logits.softmax(-1).topk(min(top_k, logits.shape[-1]), dim=-1)
            tensors["topk_indices"], tensors["topk_probs"] = indices.int().contiguous(), probs.contiguous()
        save_file(tensors, os.path.join(output_dir, f"epoch_{epoch:04d}.safetensors"), metadata={"format": "pt"})
    config = CacheConfig(
        teacher_name, num_classes or 0, total, epochs, top_k, seed, tuple(size), tuple(mean), tuple(std)
    )
    with open(os.path.join(output_dir, CACHE_CONFIG), "w", encoding="utf-8") as f:
        json.dump(asdict(config), f, indent=2)
    return config


class ReplayTransform:
    """`Dataset.set_transform` function that gives the student the cached view of each image in the current epoch.

    The batch needs a `sample_index` column (`hfkd.data.add_sample_index`); `epoch` is set by the trainer's
    `CacheEpochCallback` at the start of every epoch. The student's own size and normalisation apply to the same
    crop box and flip the teacher saw.
    """

    def __init__(
        self,
        cache: TeacherCache,
        size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_column: str,
        label_column: str | None,
        num_channels: int = 3,
    ) -> None:
        self.cache, self.image_column, self.label_column = cache, image_column, label_column
        self.size, self.mean, self.std = tuple(size), tuple(mean), tuple(std)
        self.mode = "L" if num_channels == 1 else "RGB"
        self.epoch = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "sample_index" not in batch:
            raise ValueError("Replaying cached views needs a `sample_index` column: use hfkd.data.add_sample_index.")
        out: dict[str, list] = {"pixel_values": [], "sample_index": list(batch["sample_index"])}
        for image, index in zip(batch[self.image_column], batch["sample_index"]):
            image = decode_image(image)
            tensor = TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))
            box, flip = self.cache.view(self.epoch, int(index))
            out["pixel_values"].append(apply_view(tensor, box, flip, self.size, self.mean, self.std))
        if self.label_column is not None:
            out["labels"] = list(batch[self.label_column])
        return out


class CacheEpochCallback(TrainerCallback):
    """Tells a `ReplayTransform` which epoch's views to replay, at the start of every epoch (resumes included)."""

    def __init__(self, transform: ReplayTransform) -> None:
        self.transform = transform

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.transform.epoch = math.floor(state.epoch or 0.0)


def main(argv: list[str] | None = None) -> CacheConfig:
    """`python -m hfkd.teacher_cache --teacher ... --dataset ... --output_dir ...`: build a teacher cache."""
    import argparse


    parser = argparse.ArgumentParser(description="Run a teacher once over a training set's augmented views.")
    parser.add_argument("--teacher", required=True, help="teacher model (Hub id, folder, timm name or alias)")
    parser.add_argument("--dataset", required=True, help="Hub dataset id, imagefolder path or demo data name")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of views to cache (training cycles over them)")
    parser.add_argument("--top_k", type=int, default=10, help="teacher probabilities kept per view; 0: full logits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_train_samples", type=int, default=None)
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.output_dir, CACHE_CONFIG)):
        raise ValueError(f"{args.output_dir!r} already holds a teacher cache; choose another --output_dir.")
    spec = resolve_model_name(args.teacher)
    dataset = load_image_dataset(
        args.dataset,
        config_name=args.dataset_config,
        train_split=args.train_split,
        max_train_samples=args.max_train_samples,
        seed=args.seed,
    )["train"]
    image_column, _ = detect_columns(dataset, args.image_column, args.label_column)
    teacher = load_image_classifier(spec)
    image_config = image_config_for_model(teacher, load_image_processor(spec))
    mode = "L" if image_config.num_channels == 1 else "RGB"
    images = _DecodedImages(dataset, image_column, mode)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_teacher_cache(
        teacher,
        images,
        args.output_dir,
        teacher_name=args.teacher,
        size=image_config.size,
        mean=image_config.mean,
        std=image_config.std,
        epochs=args.epochs,
        top_k=args.top_k or None,
        seed=args.seed,
        batch_size=args.batch_size,
        device=device,
    )


class _DecodedImages:
    """A dataset's images as uint8 (C, H, W) tensors, decoded on access."""

    def __init__(self, dataset: Any, column: str, mode: str) -> None:
        self.dataset, self.column, self.mode = dataset, column, mode

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = decode_image(self.dataset[index][self.column])
        return TF.pil_to_tensor(image if image.mode == self.mode else image.convert(self.mode))


if __name__ == "__main__":
    main()
