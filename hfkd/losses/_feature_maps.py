"""Feature maps from model outputs: the one place that knows how each architecture reports them.

Feature losses read `hidden_states` from the `ModelOutput` they are passed (`run_for_loss` asks the teacher and the
student for them only when the loss's `needs.hidden_states` says so). This module turns them into a list of
(B, C, H, W) maps, whatever the architecture:

- CNNs in transformers (ResNet, ConvNeXt, MobileNet, EfficientNet, RegNet, ...) and timm models through
  `TimmWrapperForImageClassification` already give (B, C, H, W) maps: index 0 is the stem (embedding) output, then
  one entry per stage (MobileNet/EfficientNet: per block);
- Swin gives `reshaped_hidden_states`, used as they are;
- ViT/DeiT/BEiT give (B, N, C) tokens: the prefix tokens (class, distillation) are dropped and the patch tokens
  are laid out on their square grid.

Stages are chosen by index into that list (negative indices count from the end), the way mdistiller indexes
`feats`: `[1, 2, 3]` or `"1:"` skips the stem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from hfkd.utils.errors import UsageError

StageSpec = Sequence[int] | str | None


def _hidden_states(output: Any) -> tuple[torch.Tensor, ...]:
    getter = output.get if hasattr(output, "get") else lambda key, default=None: getattr(output, key, default)
    states = getter("reshaped_hidden_states", None) or getter("hidden_states", None)
    if not states:
        raise UsageError(
            f"The model output ({type(output).__name__}) has no hidden states. Feature losses need a model that "
            "returns `hidden_states` with `output_hidden_states=True` (transformers image classifiers and timm "
            "models through TimmWrapperForImageClassification do)."
        )
    return tuple(states)


def tokens_to_map(tokens: torch.Tensor, max_prefix_tokens: int = 8) -> torch.Tensor:
    """(B, N, C) transformer tokens -> (B, C, H, W): prefix tokens dropped, patch tokens on their square grid."""
    batch, count, channels = tokens.shape
    side = math.isqrt(count)
    prefix = count - side * side
    if prefix > max_prefix_tokens:
        side = math.isqrt(count - 1)
        prefix = count - side * side
    if side == 0 or prefix > max_prefix_tokens:
        raise UsageError(
            f"Cannot lay {count} tokens out on a square grid of patches (shape {tuple(tokens.shape)}); feature "
            "losses support square patch grids."
        )
    return tokens[:, prefix:].transpose(1, 2).reshape(batch, channels, side, side)


def as_feature_map(state: torch.Tensor) -> torch.Tensor:
    if state.ndim == 4:
        return state
    if state.ndim == 3:
        return tokens_to_map(state)
    raise UsageError(f"Unsupported hidden-state shape {tuple(state.shape)}; expected (B, C, H, W) or (B, N, C).")


def feature_maps(output: Any) -> list[torch.Tensor]:
    """Every hidden state of `output` as a (B, C, H, W) map, stem first."""
    return [as_feature_map(state) for state in _hidden_states(output)]


def resolve_stages(spec: StageSpec, count: int) -> list[int]:
    """Stage indices from a list of ints (negatives allowed), a slice string such as `"1:"`, or `None` (all)."""
    if spec is None:
        indices = list(range(count))
    elif isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) != 2:
            raise UsageError(f"Stage selection {spec!r} must be a list of indices or a slice such as '1:' or '-2:'.")
        start, stop = (int(p) if p.strip() else None for p in parts)
        indices = list(range(count))[slice(start, stop)]
    else:
        indices = [int(i) for i in spec]
    resolved = []
    for index in indices:
        if not -count <= index < count:
            raise UsageError(
                f"Stage index {index} is out of range: the model reports {count} feature maps (indices 0..{count - 1},"
                " 0 being the stem). Choose stages within that range."
            )
        resolved.append(index % count)
    if not resolved:
        raise UsageError(f"Stage selection {spec!r} selects no feature map out of {count}.")
    return resolved


def select_features(output: Any, stages: StageSpec) -> list[torch.Tensor]:
    """The selected (B, C, H, W) stage maps of a model output."""
    maps = feature_maps(output)
    return [maps[i] for i in resolve_stages(stages, len(maps))]


def pooled_features(output: Any) -> torch.Tensor:
    """Global-average-pooled last feature map (B, C): mdistiller's `pooled_feat`."""
    return feature_maps(output)[-1].mean(dim=(2, 3))


def neck_features(output: Any, role: str, loss_key: str) -> list[torch.Tensor]:
    """A detector output's `neck_features`: its neck's (B, C, H, W) levels (FPN outputs, finest first).

    The object-detection task puts them on both models' outputs; any other output is refused with the fix.
    """
    getter = output.get if isinstance(output, dict) else lambda key, default=None: getattr(output, key, default)
    levels = getter("neck_features", None)
    if not levels:
        raise UsageError(
            f"{loss_key}: the {role} output ({type(output).__name__}) has no `neck_features`. This loss distills a "
            "detector's neck (FPN) levels and serves object detection only: train a detector with the "
            "object-detection task, which gives both outputs `neck_features`."
        )
    return list(levels)
