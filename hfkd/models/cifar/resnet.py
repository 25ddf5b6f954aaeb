"""CIFAR ResNets of the distillation tables (resnet8 ... resnet110, resnet8x4, resnet32x4).

Same networks as mdistiller `mdistiller/models/cifar/resnet.py` (= HobbitLong/RepDistiller `models/resnet.py`):
a 3x3 stem conv-BN-ReLU with `num_filters[0]` channels, three stages of BasicBlocks (n = (depth - 2) / 6 blocks each,
strides 1, 2, 2, 1x1-conv-BN shortcut where the shape changes), global average pooling and `fc`. Module names match
mdistiller's, so its checkpoints load with `load_state_dict`.

Features (4 positions): the stem output (32x32), then each stage output after ReLU (32x32, 16x16, 8x8).
`preact_feats` are bn2(conv2(x)) + shortcut of each stage's last block, i.e. before its final ReLU.
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
    kaiming_fan_out_init,
    register_cifar_model,
    run_stages,
)
from hfkd.utils.errors import UsageError


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        preact = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + residual
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class CifarResNet(CifarClassifier):
    """CIFAR ResNet with BasicBlocks (mdistiller's `ResNet(depth, num_filters, "basicblock")`).

    Args:
        depth (`int`): 6n + 2 layers (8, 14, 20, 32, 44, 56, 110).
        num_filters (`list[int]`): Stem width, then the width of each of the three stages.
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "fc"

    def __init__(
        self,
        depth: int,
        num_filters: list[int],
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UsageError(f"depth={depth} is not 6n + 2 with n >= 1; use 8, 14, 20, 32, 44, 56 or 110.")
        if len(num_filters) != 4:
            raise UsageError(f"num_filters={num_filters} needs 4 widths: the stem, then the three stages.")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_chans, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.num_features = num_filters[3]
        self.feature_info = [
            {"num_chs": num_filters[0], "reduction": 1, "module": "relu"},
            {"num_chs": num_filters[1], "reduction": 1, "module": "layer1"},
            {"num_chs": num_filters[2], "reduction": 2, "module": "layer2"},
            {"num_chs": num_filters[3], "reduction": 4, "module": "layer3"},
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    _init_module = staticmethod(kaiming_fan_out_init)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's `get_bn_before_relu()`: `bn2` of each stage's last block."""
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return run_stages(self.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3), num_stages)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return cifar_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8), **kwargs)


default_cfgs = generate_default_cfgs(
    {
        name: _cfg()
        for name in (
            "cifar_resnet8",
            "cifar_resnet14",
            "cifar_resnet20",
            "cifar_resnet32",
            "cifar_resnet44",
            "cifar_resnet56",
            "cifar_resnet110",
            "cifar_resnet8x4",
            "cifar_resnet32x4",
        )
    }
)


def _create(variant: str, depth: int, num_filters: list[int], pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_cifar_model(CifarResNet, variant, pretrained, depth=depth, num_filters=num_filters, **kwargs)


@register_cifar_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8, filters [16, 16, 32, 64] (mdistiller `resnet8`); 83,892 parameters at 100 classes."""
    return _create("cifar_resnet8", 8, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-14, filters [16, 16, 32, 64] (mdistiller `resnet14`); 181,108 parameters at 100 classes."""
    return _create("cifar_resnet14", 14, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20, filters [16, 16, 32, 64] (mdistiller `resnet20`); 278,324 parameters at 100 classes."""
    return _create("cifar_resnet20", 20, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32, filters [16, 16, 32, 64] (mdistiller `resnet32`); 472,756 parameters at 100 classes."""
    return _create("cifar_resnet32", 32, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44, filters [16, 16, 32, 64] (mdistiller `resnet44`); 667,188 parameters at 100 classes."""
    return _create("cifar_resnet44", 44, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56, filters [16, 16, 32, 64] (mdistiller `resnet56`); 861,620 parameters at 100 classes."""
    return _create("cifar_resnet56", 56, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110, filters [16, 16, 32, 64] (mdistiller `resnet110`); 1,736,564 parameters at 100 classes."""
    return _create("cifar_resnet110", 110, [16, 16, 32, 64], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8x4, filters [32, 64, 128, 256] (mdistiller `resnet8x4`); 1,233,540 parameters at 100 classes."""
    return _create("cifar_resnet8x4", 8, [32, 64, 128, 256], pretrained, **kwargs)


@register_cifar_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32x4, filters [32, 64, 128, 256] (mdistiller `resnet32x4`); 7,433,860 parameters at 100 classes."""
    return _create("cifar_resnet32x4", 32, [32, 64, 128, 256], pretrained, **kwargs)
