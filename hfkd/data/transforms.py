"""Per-model image preprocessing: `ImageConfig` (what a model wants) and `build_transforms` (torchvision v2).

An `ImageConfig` comes from a transformers image processor (`image_config_from_processor`), a timm pretrained config
(`image_config_from_timm`) or both plus the model's config (`image_config_for_model`); `build_transforms` turns it into
an `ImageTransform` for training (random augmentation) or evaluation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from PIL import Image as PILImage
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2
from transformers.utils import logging

from hfkd.data.decode import decode_image
from hfkd.data.fixmatch import FixMatchRandAugment
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


TINY_IMAGE_SIZE = 64
"""Inputs up to this many pixels a side (CIFAR, Fashion-MNIST) get a plain resize and `crop_flip` under "auto"."""


TRAIN_AUGMENTS = ("auto", "rrc", "crop_flip", "fixmatch", "none")
"""`--train_augment` choices; `fixmatch` is `auto`'s crop and flip followed by FixMatch's RandAugment with Cutout
(`hfkd.data.fixmatch`: StreamLined's strong view)."""


# PIL resampling ids (what image processors store as `resample`) -> torchvision interpolation names.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


_INTERPOLATIONS = {mode.value for mode in v2.InterpolationMode}


INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
"""What `--interpolation` may set (timm's choices, and PIL's and torchvision's names for them)."""


_PIL_FROM_NAME = {name: PILImage.Resampling(number) for number, name in _PIL_RESAMPLE.items()}


def _interpolation_name(value: Any) -> str:
    if isinstance(value, v2.InterpolationMode):
        return value.value
    if isinstance(value, int):  # also PIL.Image.Resampling / PILImageResampling, both int enums
        name = _PIL_RESAMPLE.get(int(value))
    else:
        name = str(value).lower()
    if name not in _INTERPOLATIONS:
        raise UsageError(f"Unknown interpolation {value!r}. Use one of {sorted(_INTERPOLATIONS)}.")
    return name


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise UsageError(f"ImageConfig.{name} must be a positive int or (height, width), got {value!r}.")
    return pair


@dataclass(frozen=True)
class ImageConfig:
    """How one model wants its images: the geometry and normalisation that `build_transforms` turns into transforms.

    Args:
        size (`tuple[int, int]`): (height, width) the model sees; an int means square.
        resize_size (`int` or `tuple[int, int]`, *optional*): eval resize before the center crop; an int resizes
            the shortest edge. Defaults to `size / crop_pct` (timm's rule), else `size` (no crop).
        crop_pct (`float`, *optional*): share of the resized image kept by the eval center crop.
        mean (`tuple[float, ...]`), std (`tuple[float, ...]`): per-channel normalisation of [0, 1] pixels; three
            values for a 1-channel model are averaged, one value for a 3-channel model is repeated.
        interpolation (`str`, defaults to `"bilinear"`): a `torchvision` `InterpolationMode` value (or a PIL
            resampling id).
        num_channels (`int`, defaults to `3`): 3 converts images to RGB, 1 to grayscale ("L").
    """

    size: tuple[int, int] = (224, 224)
    resize_size: int | tuple[int, int] | None = None
    crop_pct: float | None = None
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    num_channels: int = 3

    def __post_init__(self) -> None:
        if self.num_channels not in (1, 3):
            raise UsageError(f"ImageConfig.num_channels must be 1 or 3, got {self.num_channels}.")
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise UsageError(f"ImageConfig.crop_pct must be in (0, 1], got {self.crop_pct}. Use 1.0 for no crop.")
        resize = self.resize_size
        updates = {
            "size": _pair(self.size, "size"),
            "resize_size": resize if resize is None or isinstance(resize, int) else _pair(resize, "resize_size"),
            "interpolation": _interpolation_name(self.interpolation),
            "mean": self._per_channel("mean"),
            "std": self._per_channel("std"),
        }
        if 0 in updates["std"]:
            raise UsageError(f"ImageConfig.std={updates['std']} contains 0. Use (1.0,) for no scaling.")
        for key, value in updates.items():
            object.__setattr__(self, key, value)

    def _per_channel(self, name: str) -> tuple[float, ...]:
        value = getattr(self, name)
        values = tuple(float(v) for v in value) if isinstance(value, Sequence) else (float(value),)
        if len(values) == 3 and self.num_channels == 1:  # an RGB model's statistics for a grayscale model
            return (sum(values) / 3,)
        if len(values) == 1:
            return values * self.num_channels
        if len(values) != self.num_channels:
            raise UsageError(f"ImageConfig.{name}={values} does not fit num_channels={self.num_channels}.")
        return values

    @property
    def eval_resize_size(self) -> int | tuple[int, int]:
        """The eval resize: `resize_size`, else `floor(size / crop_pct)` (an int, i.e. shortest edge, if square)."""
        if self.resize_size is not None:
            return self.resize_size
        if self.crop_pct is None:
            return self.size
        scaled = tuple(math.floor(s / self.crop_pct) for s in self.size)
        return scaled[0] if scaled[0] == scaled[1] else scaled


def _size_dict(size: Any) -> dict[str, int]:
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    items = size.items() if isinstance(size, Mapping) else asdict(size).items()  # transformers' SizeDict
    return {key: int(value) for key, value in items if value is not None}


def image_config_from_processor(processor: Any, *, num_channels: int = 3) -> ImageConfig:
    """The `ImageConfig` of a transformers image processor.

    Handles `size={"height", "width"}` (ViT, Swin), `size={"shortest_edge"}` with `crop_size` (CLIP, BiT,
    MobileNet) or with `crop_pct` (ConvNeXt/ResNet: resize to `shortest_edge / crop_pct`, center-crop; warp from
    384 on), resized-then-cropped `{"height", "width"}` (DeiT), and `TimmWrapperImageProcessor` (its timm data
    config). `num_channels` comes from the model config (processors do not know it).
    """
    data_config = getattr(processor, "data_config", None)
    if isinstance(data_config, Mapping):
        return image_config_from_timm(dict(data_config))
    size = _size_dict(getattr(processor, "size", None))
    crop = _size_dict(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else {}
    crop_pct = getattr(processor, "crop_pct", None)
    if "height" in size and "width" in size:
        base: int | tuple[int, int] = (size["height"], size["width"])
    elif "shortest_edge" in size:
        base = size["shortest_edge"]
    else:
        raise UsageError(
            f"Cannot derive an input size from {type(processor).__name__}.size={size}. Build an "
            "ImageConfig(size=(height, width), ...) yourself and pass it to build_transforms."
        )
    if "height" in crop and "width" in crop:  # resize, then center-crop to crop_size
        final = (crop["height"], crop["width"])
        resize = math.floor(base / crop_pct) if crop_pct and isinstance(base, int) else base
    elif isinstance(base, int):
        final = (base, base)
        # ConvNeXt's rule: below 384 resize the shortest edge to size / crop_pct and center-crop; from 384 warp.
        resize = math.floor(base / crop_pct) if crop_pct and base < 384 else (final if crop_pct else base)
    else:
        final, resize = base, base
    if not getattr(processor, "do_rescale", True):
        logger.warning(f"{type(processor).__name__} has do_rescale=False; hfkd transforms still scale to [0, 1].")
    normalize, resample = getattr(processor, "do_normalize", True), getattr(processor, "resample", None)
    return ImageConfig(
        size=final,
        resize_size=resize,
        crop_pct=crop_pct,
        mean=tuple(getattr(processor, "image_mean", None) or (0.5,)) if normalize else (0.0,),
        std=tuple(getattr(processor, "image_std", None) or (0.5,)) if normalize else (1.0,),
        interpolation=_interpolation_name("bilinear" if resample is None else resample),
        num_channels=num_channels,
    )


def image_config_from_timm(model_or_pretrained_cfg: Any) -> ImageConfig:
    """The `ImageConfig` of a timm model, a transformers `TimmWrapper*` model or config, or a pretrained/data cfg.

    Resolved with `timm.data.resolve_data_config` (timm's eval rule: resize to `size / crop_pct`, center-crop).
    """
    from timm.data import resolve_data_config

    source = model_or_pretrained_cfg
    cfg = source if isinstance(source, Mapping) else getattr(source, "pretrained_cfg", None)
    if cfg is None:  # TimmWrapperModel / TimmWrapperForImageClassification keep it in their config
        cfg = getattr(getattr(source, "config", None), "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        raise UsageError(
            f"{type(source).__name__} carries no timm pretrained_cfg. Pass a timm model, a TimmWrapper model or "
            "config, or a dict with input_size / mean / std / crop_pct / interpolation."
        )
    data = resolve_data_config(pretrained_cfg=dict(cfg))
    channels, height, width = data["input_size"]
    crop_pct = data.get("crop_pct")
    resize = None
    if data.get("crop_mode") == "squash" and crop_pct:  # timm squashes (warps) to size / crop_pct
        resize = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    return ImageConfig(
        size=(height, width),
        resize_size=resize,
        crop_pct=crop_pct,
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=_interpolation_name(data.get("interpolation") or "bilinear"),
        num_channels=channels,
    )


ANY_SIZE_MODEL_TYPES = frozenset({"dinov2", "dinov2_with_registers", "dinov3_vit"})
"""ViTs that interpolate their position embeddings to any input: their `config.image_size` (DINOv2's 518) is the
pre-training size, not the size the processor gives (224)."""


def image_config_for_model(model: Any, processor: Any = None) -> ImageConfig:
    """The `ImageConfig` a model needs: from its image processor (or timm config), fixed up by the model config.

    `num_channels` comes from `model.config.num_channels`. A model whose config fixes `image_size` (ViT, Swin, ...;
    not the DINOv2 / DINOv3 ViTs of `ANY_SIZE_MODEL_TYPES`) gets that size even when the processor says otherwise
    (a tiny ViT with the processor of a 224 px one).
    Without a processor or timm config, the size comes from `config.image_size` (else 224) with ImageNet statistics.
    """
    config = getattr(model, "config", None)
    num_channels = getattr(config, "num_channels", None) or 3
    if processor is not None:
        image_config = image_config_from_processor(processor, num_channels=num_channels)
    elif getattr(model, "pretrained_cfg", None) is not None or getattr(config, "pretrained_cfg", None) is not None:
        image_config = image_config_from_timm(model)
    else:
        logger.warning(f"No image processor for {type(model).__name__}: using ImageNet mean/std, bilinear resizing.")
        image_config = ImageConfig(size=getattr(config, "image_size", None) or 224, num_channels=num_channels)
    image_size = getattr(config, "image_size", None)
    if processor is not None and getattr(config, "model_type", None) in ANY_SIZE_MODEL_TYPES:
        image_size = None  # its position embeddings are interpolated: the processor's size holds
    if image_size is not None and _pair(image_size, "size") != image_config.size:
        logger.info(f"{type(model).__name__} expects {image_size} px images; the processor says {image_config.size}.")
        image_config = replace(image_config, size=_pair(image_size, "size"), resize_size=None)
    return image_config


def check_rand_augment(config_str: str | None) -> None:
    """Refuse what timm's `rand_augment_transform` would reject or silently ignore (a section without a number)."""
    if config_str is None:
        return
    sections = str(config_str).split("-")
    if sections[0] != "rand" or not all(re.fullmatch(r"[a-z]+\d[\d.]*", part) for part in sections[1:]):
        raise UsageError(
            f"rand_augment={config_str!r} is not a timm RandAugment config: write 'rand' and then sections such as "
            "-m9 (magnitude), -n2 (ops per image), -mstd0.5 (magnitude std), e.g. 'rand-m9-mstd0.5' (DIST's B2)."
        )
    try:
        rand_augment_transform(config_str, {})
    except (AssertionError, ValueError, KeyError) as err:
        raise UsageError(
            f"rand_augment={config_str!r} is not a timm RandAugment config ({err or 'unknown section'}): use e.g. "
            "'rand-m9-mstd0.5'."
        ) from None


def _rand_augment(config: ImageConfig, config_str: str) -> Any:
    """timm's RandAugment as DIST's and timm's training code build it: translations up to 45 % of the image side,
    fill with the mean colour, the model's resampling."""
    mean = tuple(round(255 * m) for m in config.mean)
    hparams = {
        "translate_const": int(min(config.size) * 0.45),
        "img_mean": mean[0] if config.num_channels == 1 else mean,
        "interpolation": _PIL_FROM_NAME.get(config.interpolation, PILImage.BILINEAR),
    }
    return rand_augment_transform(config_str, hparams)


class ImageTransform:
    """One model's preprocessing: image -> `to_mode` -> `geometry` (uint8 tensor) -> `normalize` (float tensor)
    -> `erase` (training with `random_erasing`: timm's RandomErasing in pixel mode on the normalised view)."""

    def __init__(
        self,
        config: ImageConfig,
        train: bool,
        train_augment: str = "auto",
        strong: bool = False,
        rand_augment: str | None = None,
        random_erasing: float = 0.0,
    ) -> None:
        if train_augment not in TRAIN_AUGMENTS:
            raise UsageError(f"Unknown train_augment {train_augment!r}. Use one of {TRAIN_AUGMENTS}.")
        check_rand_augment(rand_augment)
        if isinstance(random_erasing, bool) or not isinstance(random_erasing, (int, float)):
            raise UsageError(f"random_erasing must be a probability in [0, 1], got {random_erasing!r}.")
        if not 0.0 <= random_erasing <= 1.0:
            raise UsageError(f"random_erasing must be a probability in [0, 1] (DIST's B2: 0.2), got {random_erasing}.")
        tiny = max(config.size) <= TINY_IMAGE_SIZE
        if train_augment == "auto":
            train_augment = "crop_flip" if tiny else "rrc"
        self.config, self.train, self.train_augment = config, train, train_augment if train else "none"
        # FixMatch's strong view crops and flips as `auto` would, then adds its RandAugment and Cutout.
        crop = ("crop_flip" if tiny else "rrc") if self.train_augment == "fixmatch" else self.train_augment
        interpolation = v2.InterpolationMode(config.interpolation)
        if tiny:  # small images are already framed: crop nothing at eval
            steps: list[Any] = [v2.Resize(config.size, interpolation=interpolation, antialias=True)]
        else:
            steps = [
                v2.Resize(config.eval_resize_size, interpolation=interpolation, antialias=True),
                v2.CenterCrop(config.size),
            ]
        if crop == "rrc":
            steps = [v2.RandomResizedCrop(config.size, interpolation=interpolation, antialias=True)]
        elif crop == "crop_flip":  # CIFAR recipe
            steps.append(v2.RandomCrop(config.size, padding=4))
        if crop != "none":
            steps.append(v2.RandomHorizontalFlip())
        if self.train_augment == "fixmatch":
            steps.append(FixMatchRandAugment(num_ops=2))
        self.rand_augment = rand_augment if train else None
        if self.rand_augment:  # timm's RandAugment on the cropped, flipped image (DIST's B2, timm's --aa)
            steps.append(_rand_augment(config, self.rand_augment))
        self.strong = strong
        if strong:  # MLKD's strong view: the weak augmentation followed by RandAugment(2, 10)
            steps.append(v2.RandAugment(num_ops=2, magnitude=10))
        self.geometry = v2.Compose([*steps, v2.ToImage()])
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)])
        self.random_erasing = float(random_erasing) if train else 0.0
        self._eraser = (
            RandomErasing(self.random_erasing, mode="pixel", max_count=1, num_splits=0, device="cpu")
            if self.random_erasing > 0
            else None
        )

    @property
    def random(self) -> bool:
        """Whether this transform draws anything (evaluation transforms do not)."""
        return self.train_augment != "none" or self.strong or bool(self.rand_augment) or self._eraser is not None

    def erase(self, view: torch.Tensor) -> torch.Tensor:
        """timm's RandomErasing (pixel mode: normal noise in the normalised space, one box) with probability
        `random_erasing`, on a copy; the view itself without it."""
        return self._eraser(view.clone()) if self._eraser is not None else view

    def to_mode(self, image: Any) -> PILImage.Image:
        """The image (PIL, array, or undecoded `datasets.Image`) as grayscale ("L") for 1-channel models, else RGB."""
        image, mode = decode_image(image), "L" if self.config.num_channels == 1 else "RGB"
        return image if image.mode == mode else image.convert(mode)

    def signature(self, geometry_only: bool = False) -> tuple:
        """What makes two transforms give the same output (`geometry_only`: before normalisation)."""
        config = asdict(self.config)
        if geometry_only:
            del config["mean"], config["std"]
        return (self.train_augment, self.strong, self.rand_augment, self.random_erasing, *sorted(config.items()))

    def view(self, image: PILImage.Image) -> torch.Tensor:
        """The normalised view before random erasing (what `hfkd.data` erases with a draw shared by every view)."""
        return self.normalize(self.geometry(self.to_mode(image)))

    def __call__(self, image: PILImage.Image) -> torch.Tensor:
        return self.erase(self.view(image))

    def __repr__(self) -> str:
        erasing = f", random_erasing={self.random_erasing}" if self._eraser is not None else ""
        return f"ImageTransform(train_augment={self.train_augment!r}{erasing}, config={self.config},\n{self.geometry})"


def build_transforms(
    preprocess_config: ImageConfig,
    train: bool,
    *,
    train_augment: str = "auto",
    strong: bool = False,
    rand_augment: str | None = None,
    random_erasing: float = 0.0,
) -> ImageTransform:
    """`torchvision.transforms.v2` preprocessing for one model.

    Args:
        preprocess_config (`ImageConfig`):
            From `image_config_from_processor` or `image_config_from_timm`.
        train (`bool`):
            Training (random augmentation) or evaluation (deterministic).
        train_augment (`str`, *optional*, defaults to `"auto"`):
            `"rrc"`: RandomResizedCrop + horizontal flip (ImageNet); `"crop_flip"`: eval resize, RandomCrop with
            4 px padding + flip (CIFAR); `"fixmatch"`: `"auto"`'s crop and flip, then FixMatch's RandAugment
            with Cutout (`hfkd.data.fixmatch`, StreamLined's strong view); `"none"`: the eval pipeline; `"auto"`:
            `"crop_flip"` for inputs up to 64 px, else `"rrc"`. Eval: resize to `eval_resize_size` and
            center-crop; inputs up to 64 px are only resized to `size`.
        strong (`bool`, *optional*, defaults to `False`):
            Append `RandAugment(num_ops=2, magnitude=10)` to the geometry: the strong view of MLKD.
        rand_augment (`str`, *optional*):
            Training only: timm's RandAugment config (`"rand-m9-mstd0.5"`, DIST's B2 and timm's `--aa`), applied
            after the crop and flip, translating up to 45 % of the side and filling with the mean colour.
        random_erasing (`float`, *optional*, defaults to 0):
            Training only: the probability of timm's RandomErasing (pixel mode, one box) on the normalised view
            (DIST's B2: 0.2, timm's `--reprob`).

    Returns:
        `ImageTransform`: PIL image -> normalised `float32` tensor `(num_channels, height, width)`.
    """
    return ImageTransform(preprocess_config, train, train_augment, strong, rand_augment, random_erasing)


def sample_seed(seed: int, epoch: int, index: int, stream: int = 0) -> int:
    """The seed of one sample's random draws in one epoch: a pure function of (seed, epoch, index, stream).

    The teacher cache draws its views with stream 0 too (`hfkd.teacher_cache.view_params`); `stream` separates other
    views of the same sample (MLKD's strong view uses 1; copy c of an image, `distill_views_per_image`, uses 2c and
    2c + 1 for its strong view: `hfkd.data.views.copy_stream`).
    """
    mixed = ((seed * 1_000_003 + epoch) * 100_000_007 + index) % (2**63)
    return mixed if stream == 0 else (mixed * 6_364_136_223_846_793_005 + stream) % (2**63)
