"""Shared timm plumbing for the CIFAR architectures: the classifier API, feature outputs, configs and registration.

Every network in this package subclasses `CifarClassifier`. A subclass builds its layers with the module names of
mdistiller (`mdistiller/models/cifar/*.py`, identical to HobbitLong/RepDistiller `models/*.py`), so their
checkpoints load with `load_state_dict`, and implements two small methods:

- `_forward_stages(x, num_stages)` returns mdistiller's `feats` and `preact_feats` lists for the first
  `num_stages` positions (the stem, then one entry per stage);
- `_forward_final_map(feats, preact_feats)` (optional) turns them into the last feature map before pooling, when
  the network has layers after its last stage (WRN's final BN-ReLU, MobileNetV2's and ShuffleNetV2's 1x1 conv).

The base class derives from these the timm API (`forward_features`, `forward_head`, `forward_intermediates`,
`get_classifier`, `reset_classifier`) and `forward_preact_features`, which returns mdistiller's feature dict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, is_model, model_entrypoint, register_model
from torch import nn

from hfkd.utils.errors import UsageError

# CIFAR-100 statistics, as in mdistiller `mdistiller/dataset/cifar100.py`.
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


def cifar_cfg(*, first_conv: str, classifier: str, pool_size: tuple[int, int], **kwargs: Any) -> dict[str, Any]:
    """timm pretrained config of a CIFAR-100 model trained from scratch (no weights to download)."""
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": first_conv,
        "classifier": classifier,
        **kwargs,
    }


def register_cifar_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """`timm.models.register_model`, made safe to run again (module reload) and loud on a foreign name clash.

    timm only warns and overwrites when a name is registered twice. Re-registering our own entrypoint (same module)
    is harmless, so it goes through silently; a name that belongs to another package raises, because silently
    replacing someone else's architecture would change what a recipe means.
    """
    if is_model(fn.__name__):
        existing = model_entrypoint(fn.__name__)
        if getattr(existing, "__module__", None) != fn.__module__:
            raise UsageError(
                f"timm already has a model named {fn.__name__!r} (from {existing.__module__}); hfkd will not "
                "overwrite it. Unregister it or rename one of the two before importing hfkd.cifar_models."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return register_model(fn)
    return register_model(fn)


def build_cifar_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build through `timm.models.build_model_with_cfg`, so `pretrained_cfg` is set and `features_only` works.

    `pretrained=True` needs weights named by the caller's `pretrained_cfg` (a file, as `timm.create_model("local-dir:
    ...")` gives for a folder saved by hfkd); timm itself has none for these networks.
    """
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {})
    if pretrained and not any(cfg.get(key) for key in ("file", "hf_hub_id", "url", "state_dict")):
        raise UsageError(
            f"There are no pretrained weights for {variant!r} in timm; create it with pretrained=False and load a "
            "checkpoint with `model.load_state_dict(...)` (mdistiller checkpoints load as they are), or convert a "
            "released teacher with `hfkd convert`."
        )
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained=pretrained,
        feature_cfg={"feature_cls": "getter"},
        **kwargs,
    )


def run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stage whose last block has `forward_with_preact`; return the stage output and that block's preact."""
    for block in stage[:-1]:
        x = block(x)
    return stage[-1].forward_with_preact(x)


def run_stages(
    stem_out: torch.Tensor, stages: Sequence[nn.Sequential], num_stages: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The stem output, then the first `num_stages - 1` stages (each through `run_stage`): mdistiller's `feats` and
    `preact_feats` lists, with the stem output first in both."""
    x = stem_out
    feats, preact_feats = [x], [x]
    for stage in stages[: num_stages - 1]:
        x, preact = run_stage(stage, x)
        feats.append(x)
        preact_feats.append(preact)
    return feats, preact_feats


def _check_num_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 0:
        raise UsageError(f"num_classes must be an int >= 0 (0 removes the classifier), got {num_classes!r}.")


def kaiming_fan_out_init(module: nn.Module) -> None:
    """mdistiller's ResNet init: Kaiming-normal (fan-out) convolutions, BatchNorm at weight 1 and bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)


def normal_fan_out_init(module: nn.Module) -> None:
    """mdistiller's VGG and MobileNetV2 init: N(0, 2/fan-out) convolutions, BatchNorm at 1 and 0, N(0, 0.01) linear."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        nn.init.zeros_(module.bias)


class CifarClassifier(nn.Module):
    """Base class: timm classifier API and mdistiller feature outputs for the CIFAR architectures.

    Feature positions follow mdistiller: index 0 is the stem output, then one entry per stage. `feats` are the
    tensors that mdistiller returns as `feats["feats"]` and `preact_feats` those of `feats["preact_feats"]` (the
    same positions before the last ReLU); `forward_intermediates`, and therefore `hidden_states` of
    `transformers.TimmWrapperForImageClassification`, returns `feats`.

    Subclasses set `num_classes`, `num_features`, `feature_info`, `global_pool`, the classifier module under the
    attribute named by `classifier_attr`, and implement `_forward_stages`.
    """

    classifier_attr: ClassVar[str] = "fc"
    # A Linear wrapped in nn.Sequential (mdistiller's MobileNetV2 names it `classifier.0`).
    classifier_in_sequential: ClassVar[bool] = False

    num_classes: int
    num_features: int
    feature_info: list[dict[str, Any]]

    def __init__(self) -> None:
        super().__init__()
        # Receives the `preact_feats` list of every forward, so `hfkd.features.PreactivationRecorder` can hook it;
        # parameter-free, so state dicts (and mdistiller checkpoints) are unchanged.
        self.preact_tap = nn.Identity()

    # ---- to implement -------------------------------------------------------------------------------------------
    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise NotImplementedError

    def _forward_final_map(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[-1]

    def _init_module(self, module: nn.Module) -> None:
        """mdistiller's weight init for one module (called after PyTorch's default `reset_parameters`)."""

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's `get_bn_before_relu()`: the BN before each stage's last ReLU, one per stage (no stem).

        OFD reads their affine parameters as the statistics of the pre-activation maps (`preact_feats[1:]`).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement get_bn_before_relu(); the CIFAR ResNets, WRNs and VGGs "
            "(cifar_resnet*, cifar_wrn_*, cifar_vgg*) do."
        )

    def _run_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats, preact_feats = self._forward_stages(x, num_stages)
        self.preact_tap(preact_feats)
        return feats, preact_feats

    # ---- head ---------------------------------------------------------------------------------------------------
    def _make_head(self, num_classes: int, global_pool: str) -> None:
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        if num_classes > 0 and not global_pool:
            raise UsageError(
                f"global_pool={global_pool!r} (no pooling) only works without a classifier; pass num_classes=0 or "
                "global_pool='avg'."
            )
        in_features = self.num_features * self.global_pool.feat_mult()
        head = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.classifier_in_sequential:
            head = nn.Sequential(head)
        setattr(self, self.classifier_attr, head)

    def get_classifier(self) -> nn.Module:
        """The classification layer (`nn.Identity` when `num_classes == 0`)."""
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (and optionally the global pooling) as timm models do.

        Args:
            num_classes (`int`):
                New number of classes; 0 removes the classifier so `forward` returns pooled features.
            global_pool (`str`, *optional*):
                timm pooling type (`"avg"`, `"max"`, `"avgmax"`, `"catavgmax"`, or `""` for none); kept if `None`.
        """
        reference = next(self.parameters())
        self._make_head(num_classes, self.global_pool.pool_type if global_pool is None else global_pool)
        head = self.get_classifier()
        for module in head.modules():
            self._init_module(module)
        head.to(device=reference.device, dtype=reference.dtype)

    def init_weights(self) -> None:
        """Re-initialise every layer as mdistiller does at construction (PyTorch defaults, then its own scheme).

        `transformers.TimmWrapperForImageClassification(config)` re-initialises a freshly built timm model with its
        generic scheme (normal(0, 0.02) for every conv); call `model.timm_model.init_weights()` afterwards to train
        from scratch with mdistiller's initialisation.
        """
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
            self._init_module(module)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise UsageError(
                f"{type(self).__name__} does not support gradient checkpointing (CIFAR models are small); train "
                "without it (gradient_checkpointing=False)."
            )

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map before global pooling (timm convention), shape (B, `num_features`, H, W)."""
        feats, preact_feats = self._run_stages(x, len(self.feature_info))
        return self._forward_final_map(feats, preact_feats)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pooling, then the classifier unless `pre_logits`."""
        x = self.global_pool(x)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_preact_features(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Logits and mdistiller's feature dict in one pass.

        Returns:
            `dict` with keys `"feats"` (list: stem output, then every stage output, as mdistiller's `feats["feats"]`),
            `"preact_feats"` (list: the same positions before their last ReLU), `"pooled_feat"` (B x
            `num_features` after global pooling) and `"logits"` (B x `num_classes`).
        """
        feats, preact_feats = self._run_stages(x, len(self.feature_info))
        pooled = self.forward_head(self._forward_final_map(feats, preact_feats), pre_logits=True)
        return {
            "feats": feats,
            "preact_feats": preact_feats,
            "pooled_feat": pooled,
            "logits": self.get_classifier()(pooled),
        }

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the final feature map and the stage features (mdistiller's `feats`).

        Args:
            x (`torch.Tensor`): Input images (B, 3, H, W).
            indices (`int` or `list[int]`, *optional*):
                Positions to return: all if `None`, the last n if an int, else the listed ones (negative allowed).
                Position 0 is the stem output.
            norm (`bool`, *optional*, defaults to `False`):
                Apply the network's final norm to the last position (only WRN has one: its BN-ReLU before pooling).
            stop_early (`bool`, *optional*, defaults to `False`):
                Stop after the last requested position; the first return value is then that position's output.
            output_fmt (`str`, *optional*, defaults to `"NCHW"`): Only `"NCHW"` is supported.
            intermediates_only (`bool`, *optional*, defaults to `False`): Return only the list.

        Returns:
            `(final_feature_map, intermediates)`, or `intermediates` if `intermediates_only`. The final feature map
            equals `forward_features(x)` unless `stop_early` cut the forward short.
        """
        if output_fmt != "NCHW":
            raise UsageError(f"output_fmt={output_fmt!r} is not supported by CIFAR models; use output_fmt='NCHW'.")
        take_indices, max_index = _take_indices(len(self.feature_info), indices)
        num_run = max_index + 1 if (stop_early or intermediates_only) else len(self.feature_info)
        feats, preact_feats = self._run_stages(x, num_run)
        last = len(self.feature_info) - 1
        intermediates = []
        for index in take_indices:
            if norm and index == last and num_run == last + 1:
                intermediates.append(self._forward_final_norm(feats, preact_feats))
            else:
                intermediates.append(feats[index])
        if intermediates_only:
            return intermediates
        final = self._forward_final_map(feats, preact_feats) if num_run == last + 1 else feats[-1]
        return final, intermediates

    def _forward_final_norm(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return feats[-1]


def _take_indices(num_positions: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    if indices is None:
        indices = num_positions
    if isinstance(indices, int):
        if not 0 < indices <= num_positions:
            raise UsageError(f"indices={indices} asks for the last {indices} features; use 1 to {num_positions}.")
        taken = list(range(num_positions - indices, num_positions))
    else:
        taken = []
        for index in indices:
            absolute = num_positions + index if index < 0 else index
            if not 0 <= absolute < num_positions:
                raise UsageError(
                    f"Feature index {index} is out of range; this model has {num_positions} positions "
                    f"(0 = stem, then one per stage), use -{num_positions} to {num_positions - 1}."
                )
            taken.append(absolute)
        if not taken:
            raise UsageError("indices is empty; pass None for all positions or a non-empty list.")
    return taken, max(taken)
