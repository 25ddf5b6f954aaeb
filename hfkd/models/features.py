"""Running a model for a feature loss: hidden states and pre-activation maps on request, feature shapes probed once,
classifier heads as functions of a map, and the BN statistics OFD reads. How outputs become maps:
`hfkd.losses._feature_maps`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hfkd.losses._feature_maps import feature_maps
from hfkd.utils.errors import UsageError


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
    raise UsageError(
        f"This loss classifies regions of the last feature map with the model's own head, which hfkd supports for "
        f"timm models (TimmWrapperForImageClassification), ResNet, RegNet and ConvNeXt; got "
        f"{type(model).__name__} (model_type {model_type!r}). Use one of those, or a logit loss such as kd or dkd."
    )


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
        raise UsageError(
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


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())
