"""Joint transforms of an image and its segmentation mask (torchvision v2, `tv_tensors.Mask`).

Training, as the references' pipelines do (DIST's `CSTrainValSet`, mmseg's `RandomResize` + `RandomCrop` +
`RandomFlip`): the image and its mask are rescaled together by a random factor in `scale_range` (nearest for the mask),
padded to the crop size (image 0 after normalisation, i.e. the mean colour as DIST pads; mask the ignore index) at the
bottom and right, randomly cropped to `crop_size` and flipped with probability 1/2. Evaluation keeps the mask at full
resolution (the metrics resize the logits to it) and resizes the image only when `eval_size` asks for it.

Every random draw of a sample comes from (seed, epoch, index) (`hfkd.data.transforms.sample_seed`), so a resumed
run sees the same crops as an uninterrupted one, and the teachers' pixels are the student's crop normalised their way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from hfkd.data.batch import IGNORE_INDEX
from hfkd.utils.errors import UsageError


@dataclass(frozen=True)
class CropSettings:
    """The training geometry: `crop_size` (height, width), the random rescale range and its step (DIST draws
    0.5 + k/10 for k in 0..15: `scale_step=0.1`; `None` draws uniformly), and the mask value of padded pixels."""

    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    scale_step: float | None = None
    flip: bool = True
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        height, width = self.crop_size
        if min(height, width) < 1:
            raise UsageError(f"--crop_size must be two positive sides (height width), got {self.crop_size}.")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise UsageError(
                f"--scale_range must be 0 < low <= high (DIST and mmseg: 0.5 2.0), got {self.scale_range}."
            )
        if self.scale_step is not None and not self.scale_step > 0:
            raise UsageError(f"--scale_step must be > 0 (DIST: 0.1) or unset, got {self.scale_step}.")

    def draw_scale(self, rng: random.Random) -> float:
        low, high = self.scale_range
        if self.scale_step is None:
            return rng.uniform(low, high)
        steps = int(round((high - low) / self.scale_step))
        return low + rng.randint(0, steps) * self.scale_step


def mask_tensor(mask: PILImage.Image | np.ndarray) -> tv_tensors.Mask:
    """A (1, H, W) int64 `tv_tensors.Mask` from a mask image (modes L, P, I, I;16) or array of class ids."""
    array = np.asarray(mask)
    if array.ndim == 3:
        if array.shape[-1] == 1:
            array = array[..., 0]
        else:
            raise UsageError(
                f"A segmentation mask must hold one class id per pixel (a single-channel image), got an image of "
                f"shape {array.shape}: colour-coded masks need their palette mapped to class ids first."
            )
    return tv_tensors.Mask(torch.from_numpy(array.astype(np.int64))[None])


def image_tensor(image: PILImage.Image, num_channels: int = 3) -> tv_tensors.Image:
    image = (
        image.convert("L" if num_channels == 1 else "RGB")
        if image.mode != ("L" if num_channels == 1 else "RGB")
        else image
    )
    return tv_tensors.Image(TF.pil_to_tensor(image))


def train_crop(
    image: tv_tensors.Image, mask: tv_tensors.Mask, settings: CropSettings, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 image, int64 mask, bool padded) of one training sample: rescale, pad, crop, flip (see the module doc).
    `padded` marks the pixels that padding added, which the image pipeline fills with the mean colour."""
    height, width = image.shape[-2:]
    scale = settings.draw_scale(rng)
    size = [max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))]
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask, size)  # a Mask resizes with nearest
    crop_h, crop_w = settings.crop_size
    pad_h, pad_w = max(crop_h - size[0], 0), max(crop_w - size[1], 0)
    padded = torch.zeros((1, *size), dtype=torch.bool)
    if pad_h or pad_w:
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=settings.ignore_index)
        padded = TF.pad(padded, [0, 0, pad_w, pad_h], fill=True)
    top = rng.randint(0, image.shape[-2] - crop_h)
    left = rng.randint(0, image.shape[-1] - crop_w)
    image, mask = TF.crop(image, top, left, crop_h, crop_w), TF.crop(mask, top, left, crop_h, crop_w)
    padded = padded[..., top : top + crop_h, left : left + crop_w]
    if settings.flip and rng.random() < 0.5:
        image, mask, padded = TF.horizontal_flip(image), TF.horizontal_flip(mask), padded.flip(-1)
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0], padded[0]


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float], padded: torch.Tensor | None = None):
    """A float image normalised with `mean`/`std`; padded pixels set to 0 (the mean colour), as DIST pads."""
    pixels = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(mean), list(std))
    if padded is not None and padded.any():
        pixels = pixels.masked_fill(padded, 0.0)
    return pixels


def eval_resize(image: tv_tensors.Image, eval_size: tuple[int, int] | None) -> torch.Tensor:
    """The evaluation image: resized to `eval_size` when given (the mask keeps its full resolution)."""
    if eval_size is not None and tuple(image.shape[-2:]) != tuple(eval_size):
        image = TF.resize(image, list(eval_size), interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return image.as_subclass(torch.Tensor)
