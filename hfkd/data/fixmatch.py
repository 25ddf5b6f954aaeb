"""FixMatch's RandAugment, the strong view of StreamLined's CIFAR-100 driver (`--train_augment fixmatch`).

StreamLined (HyunJunSik/StreamLined, `CIFAR-100/Utils/train.py`, its local `RandAugment(2, 10)`) takes it from
FixMatch's code, and it is neither timm's `rand-m10-n2` nor torchvision's RandAugment:

- the magnitude argument is ignored: each op draws its value uniformly from its own range;
- 2 ops are drawn with replacement from the 14 below, and each is always applied;
- the enhance ops (brightness, colour, contrast, sharpness) only darken or flatten (factor 0.05 to 0.95), and
  posterize always keeps 1 bit (its range (0, 1) truncates to 0, raised to 1);
- geometric ops resample with nearest neighbours and fill with black (PIL's defaults);
- Cutout always follows: a square of side U(0, 0.5) x the image width, filled with (125, 123, 114). Its centre comes
  from `np.random.uniform(w)`, i.e. numpy's `low=w, high=1`: it lies in (1, w], never at the image's top-left
  pixel, and is kept so here.

The random numbers come from torch's generator (which hfkd seeds per sample and epoch), not from Python's and
numpy's as in the reference: the same distributions, other draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image as PILImage
from PIL import ImageDraw, ImageEnhance, ImageOps

CUTOUT_FILL = (125, 123, 114)
"""Cutout's fill colour (RGB); a grayscale image takes its grey (`cutout_fill`)."""


MAX_CUTOUT = 0.5
"""Cutout's largest side, as a share of the image width."""


def auto_contrast(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageOps.autocontrast(image)


def brightness(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageEnhance.Brightness(image).enhance(value)


def color(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageEnhance.Color(image).enhance(value)


def contrast(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageEnhance.Contrast(image).enhance(value)


def equalize(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageOps.equalize(image)


def identity(image: PILImage.Image, value: float) -> PILImage.Image:
    return image


def posterize(image: PILImage.Image, value: float) -> PILImage.Image:
    """Keep `max(1, int(value))` bits per channel: with the range (0, 1), always 1."""
    return ImageOps.posterize(image, max(1, int(value)))


def rotate(image: PILImage.Image, value: float) -> PILImage.Image:
    """Rotate `value` degrees counter-clockwise about the centre."""
    return image.rotate(value)


def _affine(image: PILImage.Image, coefficients: tuple[float, ...]) -> PILImage.Image:
    """PIL's affine transform: the output pixel (x, y) takes the input's (a x + b y + c, d x + e y + f)."""
    return image.transform(image.size, PILImage.Transform.AFFINE, coefficients)


def sharpness(image: PILImage.Image, value: float) -> PILImage.Image:
    return ImageEnhance.Sharpness(image).enhance(value)


def shear_x(image: PILImage.Image, value: float) -> PILImage.Image:
    return _affine(image, (1, value, 0, 0, 1, 0))


def shear_y(image: PILImage.Image, value: float) -> PILImage.Image:
    return _affine(image, (1, 0, 0, value, 1, 0))


def solarize(image: PILImage.Image, value: float) -> PILImage.Image:
    """Invert the pixels at or above the threshold `value`."""
    return ImageOps.solarize(image, value)


def translate_x(image: PILImage.Image, value: float) -> PILImage.Image:
    """Shift by `value` x the width (a positive value moves the content left)."""
    return _affine(image, (1, 0, value * image.size[0], 0, 1, 0))


def translate_y(image: PILImage.Image, value: float) -> PILImage.Image:
    return _affine(image, (1, 0, 0, 0, 1, value * image.size[1]))


FIXMATCH_OPS: tuple[tuple[str, Callable[[PILImage.Image, float], PILImage.Image], float, float], ...] = (
    ("auto_contrast", auto_contrast, 0.0, 1.0),
    ("brightness", brightness, 0.05, 0.95),
    ("color", color, 0.05, 0.95),
    ("contrast", contrast, 0.05, 0.95),
    ("equalize", equalize, 0.0, 1.0),
    ("identity", identity, 0.0, 1.0),
    ("posterize", posterize, 0.0, 1.0),
    ("rotate", rotate, -30.0, 30.0),
    ("sharpness", sharpness, 0.05, 0.95),
    ("shear_x", shear_x, -0.3, 0.3),
    ("shear_y", shear_y, -0.3, 0.3),
    ("solarize", solarize, 0.0, 256.0),
    ("translate_x", translate_x, -0.3, 0.3),
    ("translate_y", translate_y, -0.3, 0.3),
)
"""(name, op, low, high): the op pool and the range each op draws its value from, in the reference's order."""


def cutout_fill(mode: str) -> int | tuple[int, ...]:
    """`CUTOUT_FILL` in an image mode: the colour for RGB, its grey (PIL's conversion) for "L"."""
    return PILImage.new("RGB", (1, 1), CUTOUT_FILL).convert(mode).getpixel((0, 0))


def cutout(image: PILImage.Image, fraction: float, centre_x: float, centre_y: float) -> PILImage.Image:
    """A copy of `image` with a square of side `fraction` x width filled with `cutout_fill`: its top-left corner at
    the centre less half the side (clipped at 0, truncated to a pixel), its far corner at most the image's size (PIL
    draws both corners inclusively). `fraction` 0 leaves the image as it is."""
    if fraction <= 0:
        return image
    width, height = image.size
    side = fraction * width
    left, top = int(max(0.0, centre_x - side / 2)), int(max(0.0, centre_y - side / 2))
    box = (left, top, min(width, left + side), min(height, top + side))
    image = image.copy()
    ImageDraw.Draw(image).rectangle(box, fill=cutout_fill(image.mode))
    return image


class FixMatchRandAugment:
    """FixMatch's RandAugment with Cutout, on a PIL image (see the module docstring): `num_ops` ops drawn with
    replacement, each at a value drawn uniformly from its range, then Cutout. Draws from torch's global generator.

    Args:
        num_ops (`int`, *optional*, defaults to 2): ops per image (StreamLined's `RandAugment(2, 10)`).
    """

    def __init__(self, num_ops: int = 2) -> None:
        if not isinstance(num_ops, int) or num_ops < 1:
            raise ValueError(f"FixMatchRandAugment needs num_ops >= 1, got {num_ops!r}.")
        self.num_ops = num_ops

    def __call__(self, image: PILImage.Image) -> PILImage.Image:
        picks = torch.randint(len(FIXMATCH_OPS), (self.num_ops,)).tolist()
        for pick in picks:
            _, op, low, high = FIXMATCH_OPS[pick]
            image = op(image, low + (high - low) * float(torch.rand(())))
        fraction = MAX_CUTOUT * float(torch.rand(()))
        if fraction <= 0:
            return image
        # numpy's uniform(w) is uniform(low=w, high=1): w + (1 - w) u, in (1, w].
        width, height = image.size
        centre_x = width + (1 - width) * float(torch.rand(()))
        centre_y = height + (1 - height) * float(torch.rand(()))
        return cutout(image, fraction, centre_x, centre_y)

    def __repr__(self) -> str:
        return f"FixMatchRandAugment(num_ops={self.num_ops}, cutout<={MAX_CUTOUT})"
