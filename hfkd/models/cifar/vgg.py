"""CIFAR VGGs with BatchNorm of the distillation tables (vgg8, vgg11, vgg13, vgg16, vgg19).

Same networks as mdistiller `mdistiller/models/cifar/vgg.py` (= RepDistiller `models/vgg.py`) in their `*_bn` form,
which is what mdistiller's model dict calls `vgg8` ... `vgg19`: five blocks of conv3x3(bias)-BN-ReLU (configs S, A, B,
D, E), the last ReLU of each block applied outside it, 2x2 max pooling between blocks 0-1, 1-2 and 2-3 (and between
3-4 only for 64x64 inputs, as upstream), global average pooling and a single `classifier` Linear(512, num_classes).
Module names match mdistiller's, so its checkpoints load with `load_state_dict`.

Features (5 positions): relu(block0) at 32x32, then relu(block1..4) at 16x16, 8x8, 4x4, 4x4; `preact_feats` are the
block outputs before that ReLU (the stem position repeats its post-ReLU output, as upstream).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import nn

from hfkd.models.cifar._base import (
    CifarClassifier,
    build_cifar_model,
    cifar_cfg,
    normal_fan_out_init,
    register_cifar_model,
)
from hfkd.utils.errors import UsageError

VGG_CFGS: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def _make_block(widths: list[int], batch_norm: bool, in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        in_channels = width
    # the block ends before its last ReLU, so the pre-activation is the block output
    return nn.Sequential(*layers[:-1])


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class CifarVGG(CifarClassifier):
    """CIFAR VGG (mdistiller's `VGG(cfg, batch_norm)`).

    Args:
        cfg (`str`): One of `"S"` (vgg8), `"A"` (vgg11), `"B"` (vgg13), `"D"` (vgg16), `"E"` (vgg19).
        batch_norm (`bool`, *optional*, defaults to `True`): BN after each conv (the tables use BN).
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        cfg: str,
        batch_norm: bool = True,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if cfg not in VGG_CFGS:
            raise UsageError(f"cfg={cfg!r} is not a VGG config; use one of {sorted(VGG_CFGS)}.")
        widths = VGG_CFGS[cfg]
        self.block0 = _make_block(widths[0], batch_norm, in_chans)
        self.block1 = _make_block(widths[1], batch_norm, widths[0][-1])
        self.block2 = _make_block(widths[2], batch_norm, widths[1][-1])
        self.block3 = _make_block(widths[3], batch_norm, widths[2][-1])
        self.block4 = _make_block(widths[4], batch_norm, widths[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.num_features = widths[4][-1]
        self.feature_info = [
            {"num_chs": widths[0][-1], "reduction": 1, "module": "block0"},
            {"num_chs": widths[1][-1], "reduction": 2, "module": "block1"},
            {"num_chs": widths[2][-1], "reduction": 4, "module": "block2"},
            {"num_chs": widths[3][-1], "reduction": 8, "module": "block3"},
            {"num_chs": widths[4][-1], "reduction": 8, "module": "block4"},
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    _init_module = staticmethod(normal_fan_out_init)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's `get_bn_before_relu()`: the last module of `block1` ... `block4`, their BN before the ReLU.

        Raises `NotImplementedError` without BN (`batch_norm=False`), where that module is a conv.
        """
        norms = [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]
        if not all(isinstance(norm, nn.BatchNorm2d) for norm in norms):
            raise NotImplementedError("CifarVGG(batch_norm=False) has no BN before its ReLUs.")
        return norms

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Upstream pools between blocks 3 and 4 only for 64x64 inputs (Tiny-ImageNet); 32x32 keeps 4x4.
        pool3 = self.pool3 if x.shape[2] == 64 else _identity
        x = F.relu(self.block0(x))
        feats, preact_feats = [x], [x]
        stages = (
            (self.pool0, self.block1),
            (self.pool1, self.block2),
            (self.pool2, self.block3),
            (pool3, self.block4),
        )
        for pool, block in stages[: num_stages - 1]:
            preact = block(pool(x))
            x = F.relu(preact)
            feats.append(x)
            preact_feats.append(preact)
        return feats, preact_feats


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return cifar_cfg(first_conv="block0.0", classifier="classifier", pool_size=(4, 4), **kwargs)


default_cfgs = generate_default_cfgs(
    {name: _cfg() for name in ("cifar_vgg8", "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19")}
)


def _create(variant: str, cfg: str, pretrained: bool, **kwargs: Any) -> CifarVGG:
    return build_cifar_model(CifarVGG, variant, pretrained, cfg=cfg, **kwargs)


@register_cifar_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-8 with BN, config S (mdistiller `vgg8_bn`, its model dict's `vgg8`); 3,965,028 parameters at 100 classes."""
    return _create("cifar_vgg8", "S", pretrained, **kwargs)


@register_cifar_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with BN, config A (mdistiller `vgg11_bn`); 9,277,284 parameters at 100 classes."""
    return _create("cifar_vgg11", "A", pretrained, **kwargs)


@register_cifar_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13 with BN, config B (mdistiller `vgg13_bn`, its model dict's `vgg13`); 9,462,180 parameters at 100
    classes."""
    return _create("cifar_vgg13", "B", pretrained, **kwargs)


@register_cifar_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 with BN, config D (mdistiller `vgg16_bn`); 14,774,436 parameters at 100 classes."""
    return _create("cifar_vgg16", "D", pretrained, **kwargs)


@register_cifar_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19 with BN, config E (mdistiller `vgg19_bn`); 20,086,692 parameters at 100 classes."""
    return _create("cifar_vgg19", "E", pretrained, **kwargs)
