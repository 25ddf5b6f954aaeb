"""Stage features from model outputs: the one place that knows how each architecture reports them.

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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

StageSpec = Sequence[int] | str | None


def _hidden_states(output: Any) -> tuple[torch.Tensor, ...]:
    getter = output.get if hasattr(output, "get") else lambda key, default=None: getattr(output, key, default)
    states = getter("reshaped_hidden_states", None) or getter("hidden_states", None)
    if not states:
        raise ValueError(
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
        raise ValueError(
            f"Cannot lay {count} tokens out on a square grid of patches (shape {tuple(tokens.shape)}); feature "
            "losses support square patch grids."
        )
    return tokens[:, prefix:].transpose(1, 2).reshape(batch, channels, side, side)


def as_feature_map(state: torch.Tensor) -> torch.Tensor:
    if state.ndim == 4:
        return state
    if state.ndim == 3:
        return tokens_to_map(state)
    raise ValueError(f"Unsupported hidden-state shape {tuple(state.shape)}; expected (B, C, H, W) or (B, N, C).")


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
            raise ValueError(f"Stage selection {spec!r} must be a list of indices or a slice such as '1:' or '-2:'.")
        start, stop = (int(p) if p.strip() else None for p in parts)
        indices = list(range(count))[slice(start, stop)]
    else:
        indices = [int(i) for i in spec]
    resolved = []
    for index in indices:
        if not -count <= index < count:
            raise ValueError(
                f"Stage index {index} is out of range: the model reports {count} feature maps (indices 0..{count - 1},"
                " 0 being the stem). Choose stages within that range."
            )
        resolved.append(index % count)
    if not resolved:
        raise ValueError(f"Stage selection {spec!r} selects no feature map out of {count}.")
    return resolved


def select_features(output: Any, stages: StageSpec) -> list[torch.Tensor]:
    """The selected (B, C, H, W) stage maps of a model output."""
    maps = feature_maps(output)
    return [maps[i] for i in resolve_stages(stages, len(maps))]


def pooled_features(output: Any) -> torch.Tensor:
    """Global-average-pooled last feature map (B, C): mdistiller's `pooled_feat`."""
    return feature_maps(output)[-1].mean(dim=(2, 3))


def run_for_loss(
    model: nn.Module, recorder: PreactivationRecorder | None, hidden_states: bool, /, **inputs: Any
) -> Any:
    """`model(**inputs)` with what a loss needs on the output: `hidden_states` when asked, and the pre-activation
    maps (`preact_hidden_states`) when given the model's `PreactivationRecorder`. Teacher and student both run so."""
    if hidden_states:
        inputs["output_hidden_states"] = True
    return model(**inputs) if recorder is None else recorder.run(model, **inputs)


@torch.no_grad()
def probe_feature_shapes(model: nn.Module, pixel_values: torch.Tensor) -> list[tuple[int, ...]]:
    """Run `model` once on `pixel_values` and return the (C, H, W) shape of every feature map.

    The trainer calls this before training, so that losses can build adapters (regressors, connectors) for the
    student's and the teacher's feature shapes. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        output = model(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        model.train(was_training)
    return [tuple(m.shape[1:]) for m in feature_maps(output)]


def classifier_head(model: nn.Module) -> Any:
    """The model's classifier as a function of a feature map: (B, C, h, w) -> (B, num_classes) logits.

    Used by SDD, which classifies pooled regions of the last feature map with the model's own head. The map goes
    through exactly what the model does after its last stage: timm's `forward_head` (pool, norm, fc); ResNet and
    RegNet: global average pool and `classifier`; ConvNeXt: pool, `layernorm`, `classifier`.
    """
    timm_model = getattr(model, "timm_model", None)
    if timm_model is not None:
        return timm_model.forward_head
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ("resnet", "regnet"):
        return lambda feature_map: model.classifier(feature_map.mean(dim=(2, 3), keepdim=True))
    if model_type == "convnext":
        return lambda feature_map: model.classifier(model.convnext.layernorm(feature_map.mean(dim=(2, 3))))
    raise ValueError(
        f"This loss classifies regions of the last feature map with the model's own head, which hfkd supports for "
        f"timm models (TimmWrapperForImageClassification), ResNet, RegNet and ConvNeXt; got "
        f"{type(model).__name__} (model_type {model_type!r}). Use one of those, or a logit loss such as kd or dkd."
    )


# ---- pre-activation maps (OFD) ---------------------------------------------------------------------------------
# transformers models return post-activation hidden states only; the maps before each stage's last ReLU are read
# with forward hooks, which live here and nowhere else.


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP/DeepSpeed (`.module`) and hfkd's DistillationModule (`.student`)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "student", None) if hasattr(model, "distill_loss") else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _preact_architecture(model: nn.Module) -> tuple[str, nn.Module] | None:
    """("resnet", ResNetModel) for transformers ResNet, ("cifar", timm model) for hfkd's CIFAR models that name
    their BN-before-ReLU modules, else None."""
    model = _unwrap(model)
    if getattr(getattr(model, "config", None), "model_type", None) == "resnet":
        base = getattr(model, "resnet", model)
        if hasattr(base, "embedder") and hasattr(base, "encoder"):
            return "resnet", base
    timm_model = getattr(model, "timm_model", None)
    if isinstance(getattr(timm_model, "preact_tap", None), nn.Module):
        try:
            timm_model.get_bn_before_relu()
        except (AttributeError, NotImplementedError):
            return None
        return "cifar", timm_model
    return None


def supports_preactivations(model: nn.Module) -> bool:
    """Whether hfkd can record `model`'s pre-activation stage maps and read its BN-before-ReLU statistics."""
    return _preact_architecture(model) is not None


def require_preactivations(model: nn.Module, role: str = "model") -> tuple[str, nn.Module]:
    """The architecture kind and base module of a supported model, or a ValueError that names the alternatives."""
    found = _preact_architecture(model)
    if found is None:
        bare = _unwrap(model)
        model_type = getattr(getattr(bare, "config", None), "model_type", None)
        architecture = getattr(getattr(bare, "config", None), "architecture", None)
        raise ValueError(
            f"This loss needs the {role}'s pre-activation features (stage maps before the last ReLU) and the BN "
            "before that ReLU, which hfkd reads from transformers ResNet (model_type 'resnet') and from the CIFAR "
            "ResNets, WRNs and VGGs of hfkd.cifar_models (cifar_resnet*, cifar_wrn_*, cifar_vgg*) through "
            "TimmWrapperForImageClassification; got "
            f"{type(bare).__name__} (model_type {model_type!r}"
            + (f", architecture {architecture!r}" if architecture else "")
            + "). Use a feature loss on post-activation features instead, such as 'at', 'fitnet' or 'reviewkd'."
        )
    return found


def bn_before_relu_stats(model: nn.Module, role: str = "model") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(bias, |weight|) of the BN before each pre-activation map's ReLU, stem first, as `preact_hidden_states`.

    transformers ResNet: the stem's BN (`embedder.embedder.normalization`), then per stage the last BN of the last
    layer's residual branch (`layers[-1].layer[-1].normalization`). CIFAR models: mdistiller's
    `get_bn_before_relu()` per stage; their stem entry is mdistiller's stem output (post-ReLU except WRN's raw
    stem conv), which has no BN before a ReLU and which OFD never distils, and gets a neutral (0, 1) pair, only to
    keep the list aligned.
    """
    kind, base = require_preactivations(model, role)
    if kind == "resnet":
        norms = [base.embedder.embedder.normalization]
        norms += [stage.layers[-1].layer[-1].normalization for stage in base.encoder.stages]
        stem: list[tuple[torch.Tensor, torch.Tensor]] = []
    else:
        norms = list(base.get_bn_before_relu())
        reference = norms[0].weight
        channels = base.feature_info[0]["num_chs"]
        stem = [(reference.new_zeros(channels).detach(), reference.new_ones(channels).detach())]
    return stem + [(bn.bias.detach().clone(), bn.weight.detach().abs().clone()) for bn in norms]


class PreactivationRecorder:
    """Forward hooks that record a model's pre-activation stage maps, stem first, laid out like `hidden_states`.

    The hooks stay registered but record only inside `run(module, **inputs)`, which calls the module, attaches the
    maps to its output as `preact_hidden_states` and forgets them, so nothing outlives the step. They are not state:
    checkpoints and `save_pretrained` are unaffected. `close()` (or leaving a `with` block) removes them.

    transformers ResNet: the input of each stage's last activation (residual + shortcut); for the stem, the input of
    the embedder's activation, max-pooled by the embedder's own pooler so that it has `hidden_states[0]`'s shape
    (relu and max-pooling commute, so relu(preact[0]) == hidden_states[0]). CIFAR models (through
    TimmWrapperForImageClassification): mdistiller's `preact_feats`, read from the model's `preact_tap`.
    """

    def __init__(self, model: nn.Module, role: str = "model") -> None:
        kind, base = require_preactivations(model, role)
        self._recording = False
        self._maps: dict[int, torch.Tensor] = {}
        if kind == "resnet":
            pooler = base.embedder.pooler
            points = [base.embedder.embedder.activation] + [s.layers[-1].activation for s in base.encoder.stages]
            self._handles = [
                module.register_forward_pre_hook(self._pre_hook(i, pooler if i == 0 else None))
                for i, module in enumerate(points)
            ]
        else:
            self._handles = [base.preact_tap.register_forward_hook(self._tap_hook)]

    def _pre_hook(self, index: int, post: nn.Module | None) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._recording:
                self._maps[index] = args[0] if post is None else post(args[0])

        return hook

    def _tap_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._recording:
            self._maps = dict(enumerate(args[0]))

    def run(self, module: nn.Module, /, **inputs: Any) -> Any:
        """`module(**inputs)` with `preact_hidden_states` attached to its output (when the hooks saw any)."""
        self._maps, self._recording = {}, True
        try:
            output = module(**inputs)
        finally:
            maps, self._maps, self._recording = self._maps, {}, False
        if maps:
            preacts = tuple(maps[i] for i in sorted(maps))
            if isinstance(output, dict) and not hasattr(output, "to_tuple"):
                output["preact_hidden_states"] = preacts
            else:
                # An attribute, not a key: ModelOutput.to_tuple() and eval predictions stay as they were.
                object.__setattr__(output, "preact_hidden_states", preacts)
        return output

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> PreactivationRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
