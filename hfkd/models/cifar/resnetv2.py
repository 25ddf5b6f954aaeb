"""The CIFAR-style ResNet18 and ResNet50 of the distillation tables (a 3x3 stem and no max pooling).

Same networks as mdistiller `mdistiller/models/cifar/resnetv2.py` (= RepDistiller `models/resnetv2.py`, after
kuangliu's pytorch-cifar): a 3x3 conv-BN-ReLU stem with 64 channels at full resolution, four stages (widths 64,
128, 256, 512, times 4 for bottlenecks; strides 1, 2, 2, 2) with 1x1-conv-BN shortcuts where the shape changes,
global average pooling and `linear`. The names differ from timm's ImageNet `resnet18`/`resnet50` on purpose: these
are other networks. Module names match mdistiller's, so its checkpoints load with `load_state_dict`.

Features (5 positions): the stem output (32x32), then each stage output after ReLU (32x32, 16x16, 8x8, 4x4);
`preact_feats` are each stage's last residual sum before its ReLU.
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


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (the pre-ReLU sum is also returned)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preact = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class Bottleneck(nn.Module):
    """1x1-BN-ReLU, 3x3(stride)-BN-ReLU, 1x1 (x4)-BN plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class CifarResNetV2(CifarClassifier):
    """CIFAR-style ResNet (mdistiller's `resnetv2.ResNet(block, num_blocks)`).

    Args:
        block (`str`): `"basic"` or `"bottleneck"`.
        num_blocks (`tuple[int, int, int, int]`):
            Blocks per stage: (2, 2, 2, 2) for ResNet18, (3, 4, 6, 3) for ResNet50.
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "linear"

    def __init__(
        self,
        block: str,
        num_blocks: tuple[int, ...],
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
        if block not in blocks:
            raise UsageError(f"block={block!r} is not supported; use 'basic' or 'bottleneck'.")
        if len(num_blocks) != 4:
            raise UsageError(f"num_blocks={num_blocks} needs 4 entries, one per stage.")
        block_cls = blocks[block]
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block_cls, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block_cls, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block_cls, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block_cls, 512, num_blocks[3], stride=2)
        self.num_features = 512 * block_cls.expansion
        self.feature_info = [{"num_chs": 64, "reduction": 1, "module": "bn1"}] + [
            {"num_chs": width * block_cls.expansion, "reduction": 2 ** max(i - 1, 0), "module": f"layer{i}"}
            for i, width in enumerate((64, 128, 256, 512), start=1)
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    def _make_layer(self, block_cls: type[nn.Module], planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(block_cls(self.in_planes, planes, block_stride))
            self.in_planes = planes * block_cls.expansion
        return nn.Sequential(*layers)

    _init_module = staticmethod(kaiming_fan_out_init)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's `get_bn_before_relu()`: the last BN of each stage's last block (`bn3` in bottlenecks)."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2 for stage in stages]

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return run_stages(
            F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3, self.layer4), num_stages
        )


default_cfgs = generate_default_cfgs(
    {
        "cifar_resnet18": cifar_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4)),
        "cifar_resnet50": cifar_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4)),
    }
)


@register_cifar_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNetV2:
    """CIFAR ResNet18, basic blocks (2, 2, 2, 2) (mdistiller `ResNet18`); 11,220,132 parameters at 100 classes."""
    return build_cifar_model(
        CifarResNetV2, "cifar_resnet18", pretrained, block="basic", num_blocks=(2, 2, 2, 2), **kwargs
    )


@register_cifar_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> CifarResNetV2:
    """CIFAR ResNet50, bottlenecks (3, 4, 6, 3) (mdistiller `ResNet50`); 23,705,252 parameters at 100 classes."""
    return build_cifar_model(
        CifarResNetV2, "cifar_resnet50", pretrained, block="bottleneck", num_blocks=(3, 4, 6, 3), **kwargs
    )
