"""Backbones' global embeddings and feature maps: the one place that knows how each model kind reports them.

`read_image_features(model, output, input_size)` turns a backbone's output into `ImageFeatures`: its global embedding
(B, D) and its last feature map (B, C, h, w), whatever the model:

- timm models (`TimmWrapperModel`, built with `num_classes=0`): `forward_features` is `last_hidden_state` and
  `forward_head(pre_logits)` the pooled `pooler_output`; a ViT's tokens lose their `num_prefix_tokens` (class,
  registers) and go on the patch grid of the input;
- transformers CNN backbones (`ResNetModel`, `ConvNextModel`, `RegNetModel`, ...): the (B, C, h, w)
  `last_hidden_state` and the pooled `pooler_output`;
- DINOv2, DINOv2 with registers and DINOv3 ViTs: `pooler_output` (the layer-normed class token) and the layer-normed
  patch tokens after the class token and the `num_register_tokens` registers;
- `CLIPVisionModel`: `pooler_output` (the class token after `post_layernorm`, before the CLIP projection) and the
  patch tokens, which its `last_hidden_state` holds before that layer norm: `post_layernorm` is applied to them;
- `SiglipVisionModel`: the attention-pooling (MAP) head's `pooler_output`, or the mean of the tokens when the model
  has no head (`vision_use_head=False`), and every token (SigLIP has no class token) on the grid.

Any other model is refused with its class named. `FeatureReader` binds this to one model and records the spatial size
of each of its inputs (a forward pre-hook), which a ViT's patch grid needs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hfkd.losses._image_features import ImageFeatures
from hfkd.losses.base import LossContext
from hfkd.utils.errors import UsageError

# transformers ViTs whose patch tokens follow 1 class token and `config.num_register_tokens` registers.
CLASS_TOKEN_VITS = ("dinov2", "dinov2_with_registers", "dinov3_vit", "clip_vision_model")
NO_CLASS_TOKEN_VITS = ("siglip_vision_model",)
SUPPORTED = (
    "timm models without a head (TimmWrapperModel), transformers CNN backbones (ResNetModel, ConvNextModel, ...), "
    "Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel, CLIPVisionModel and SiglipVisionModel"
)


def _field(output: Any, name: str) -> Any:
    return output.get(name) if isinstance(output, dict) else getattr(output, name, None)


def backbone_kind(model: nn.Module) -> str:
    """`"timm"`, `"cnn"`, `"vit"` or `"siglip"`: how `read_image_features` reads `model`; refused otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    name = type(model).__name__
    if name.endswith(("ForImageClassification", "WithTeacher")) or getattr(model, "classifier", None) is not None:
        raise UsageError(
            f"{name} is a classifier: label-free distillation reads a backbone's embedding and feature map. Pass its "
            "backbone (`AutoModel.from_pretrained(<checkpoint>)`, or `model.base_model`); the command line loads "
            "every checkpoint so."
        )
    if getattr(model, "timm_model", None) is not None:
        return "timm"
    if model_type in CLASS_TOKEN_VITS:
        return "vit"
    if model_type in NO_CLASS_TOKEN_VITS:
        return "siglip"
    if model_type is not None and hasattr(config, "hidden_sizes"):  # ResNet, ConvNeXt, RegNet, BiT, DINOv3 ConvNeXt
        return "cnn"
    raise UsageError(
        f"hfkd cannot read a global embedding and a feature map off {name} (model_type {model_type!r}). Label-free "
        f"distillation supports {SUPPORTED}."
    )


def check_backbone_config(config: dict[str, Any], name: str) -> None:
    """Refuse, from a model's config (`hfkd.models.availability.model_config`) before its weights load, a model
    `read_image_features` cannot read (a CLIP or SigLIP checkpoint is read through its vision tower)."""
    vision = config.get("vision_config") or {}
    model_type = vision.get("model_type") or config.get("model_type")
    known = model_type in (*CLASS_TOKEN_VITS, *NO_CLASS_TOKEN_VITS, "timm_wrapper") or "hidden_sizes" in config
    if not known:
        raise UsageError(
            f"{name!r} (model_type {model_type!r}): hfkd cannot read a global embedding and a feature map off it. "
            f"Label-free distillation supports {SUPPORTED}."
        )


def patch_grid(count: int, input_size: tuple[int, int] | None, patch: int | None) -> tuple[int, int]:
    """The (h, w) grid of `count` patch tokens: the input's size over the patch size, else a square."""
    if input_size is not None and patch:
        grid = (input_size[0] // patch, input_size[1] // patch)
        if grid[0] * grid[1] == count:
            return grid
    side = math.isqrt(count)
    if side * side != count:
        raise UsageError(f"Cannot lay {count} patch tokens out on a grid: pass square images, or patch-sized sides.")
    return side, side


def tokens_on_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h·w, C) patch tokens, row-major as patch embeddings flatten them -> (B, C, h, w)."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, *grid)


def _timm_features(model: nn.Module, output: Any, input_size: tuple[int, int] | None) -> ImageFeatures:
    timm_model = model.timm_model
    last, pooled = _field(output, "last_hidden_state"), _field(output, "pooler_output")
    if pooled is None:
        pooled = timm_model.forward_head(last, pre_logits=True)
    if last.ndim == 4:
        nhwc = getattr(timm_model, "output_fmt", "NCHW") == "NHWC"
        return ImageFeatures(pooled, last.permute(0, 3, 1, 2) if nhwc else last)
    patches = last[:, getattr(timm_model, "num_prefix_tokens", 1) :]
    embed = getattr(timm_model, "patch_embed", None)
    grid = None
    if embed is not None and input_size is not None and hasattr(embed, "dynamic_feat_size"):
        grid = tuple(embed.dynamic_feat_size(input_size))
    if grid is None or grid[0] * grid[1] != patches.shape[1]:
        grid = patch_grid(patches.shape[1], None, None)
    return ImageFeatures(pooled, tokens_on_grid(patches, grid))


def read_image_features(model: nn.Module, output: Any, input_size: tuple[int, int] | None = None) -> ImageFeatures:
    """`model`'s global embedding (B, D) and last feature map (B, C, h, w) in its `output` on images of
    `input_size` (H, W) (see the module docstring; `None`: a ViT's grid is taken square)."""
    kind = backbone_kind(model)
    if kind == "timm":
        return _timm_features(model, output, input_size)
    last, pooled = _field(output, "last_hidden_state"), _field(output, "pooler_output")
    if last is None:
        raise UsageError(
            f"The output of {type(model).__name__} has no last_hidden_state: pass the model's own output."
        )
    if kind == "cnn":
        pooled = last.mean(dim=(2, 3)) if pooled is None else pooled
        return ImageFeatures(pooled.flatten(1), last)
    config = model.config
    patch = getattr(config, "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if kind == "siglip":
        pooled = last.mean(dim=1) if pooled is None else pooled
        return ImageFeatures(pooled, tokens_on_grid(last, patch_grid(last.shape[1], input_size, patch)))
    patches = last[:, 1 + int(getattr(config, "num_register_tokens", 0) or 0) :]
    if config.model_type == "clip_vision_model":  # its last_hidden_state is not layer-normed; its pooler is
        patches = model.post_layernorm(patches)
    return ImageFeatures(pooled, tokens_on_grid(patches, patch_grid(patches.shape[1], input_size, patch)))


class FeatureReader:
    """`read_image_features` bound to one model, with the spatial size of the model's latest input (recorded by a
    forward pre-hook, which is not state: checkpoints and `save_pretrained` are unaffected). `close()` removes it."""

    def __init__(self, model: nn.Module) -> None:
        self.kind = backbone_kind(model)
        self.model, self.input_size = model, None
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if torch.is_tensor(pixels) and pixels.ndim == 4:
            self.input_size = tuple(pixels.shape[-2:])

    def __call__(self, output: Any) -> ImageFeatures:
        if isinstance(output, ImageFeatures):
            return output
        return read_image_features(self.model, output, self.input_size)

    def close(self) -> None:
        self._handle.remove()


@torch.no_grad()
def probe_image_features(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, tuple[int, int, int]]:
    """Run `model` once on `pixel_values`: (D of its embedding, (C, h, w) of its feature map). Its train/eval mode is
    restored afterwards."""
    reader, was_training = FeatureReader(model), model.training
    model.eval()
    try:
        features = reader(model(pixel_values=pixel_values))
    finally:
        model.train(was_training)
        reader.close()
    return int(features.embedding.shape[-1]), tuple(features.feature_map.shape[1:])


def probe_image_context(
    student: nn.Module,
    teacher: nn.Module,
    pixel_values: torch.Tensor,
    teacher_pixel_values: torch.Tensor | None = None,
) -> LossContext:
    """The `LossContext` the `embed` and `dense` losses are built with, probed on a batch (each model's pixels)."""
    student_dim, student_shape = probe_image_features(student, pixel_values)
    teacher_input = pixel_values if teacher_pixel_values is None else teacher_pixel_values
    teacher_dim, teacher_shape = probe_image_features(teacher, teacher_input)
    return LossContext(
        student_embedding_dim=student_dim,
        teacher_embedding_dim=teacher_dim,
        student_feature_shapes=[student_shape],
        teacher_feature_shapes=[teacher_shape],
    )


def is_backbone_class(name: str) -> bool:
    """Whether a transformers class (or a config's `architectures` entry) is a model without a task head:
    `Dinov2Model`, `CLIPVisionModel`, `ResNetModel`, `TimmWrapperModel`, a `*Backbone`."""
    return name.endswith(("Model", "Backbone")) and "For" not in name and name != "PreTrainedModel"
