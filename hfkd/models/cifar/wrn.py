"""Wide ResNets of the distillation tables (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Same networks as mdistiller `mdistiller/models/cifar/wrn.py` (= RepDistiller `models/wrn.py`, after Zagoruyko &
Komodakis): a 3x3 stem conv with 16 channels, three stages of pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3,
n = (depth - 4) / 6 blocks each) with widths 16k, 32k, 64k and strides 1, 2, 2, a final BN-ReLU, global average
pooling and `fc`. Dropout is 0 in every table. Module names match mdistiller's (`block1.layer.0.convShortcut`, ...),
so its checkpoints load with `load_state_dict`.

Features follow mdistiller exactly, which differs from the post-ReLU convention of the other families because the
blocks are pre-activation: `feats` are the stem conv output (no BN/ReLU) and the raw output of each stage (a
residual sum, 32x32, 16x16, 8x8); `preact_feats` are those outputs after the BN that the next layer applies before
its ReLU (`block2.layer.0.bn1`, `block3.layer.0.bn1`, the final `bn1`), and the stem output itself at position 0.
The last feature map (`forward_features`) is relu(bn1(last stage)), which is what gets pooled.

One harmless difference: mdistiller recomputes those three BNs on the stage outputs after the forward, so in
training mode their running statistics are updated twice per step; here each BN runs once and its output is reused.
Outputs and gradients are identical.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import nn

from hfkd.models.cifar._base import CifarClassifier, build_cifar_model, cifar_cfg, register_cifar_model
from hfkd.utils.errors import UsageError


class WideBasicBlock(nn.Module):
    """Pre-activation block; the shortcut is identity, or a 1x1 conv on the activated input when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.droprate = drop_rate
        self.equalInOut = in_planes == out_planes
        # camelCase kept from mdistiller so that its checkpoint keys load unchanged
        self.convShortcut = (
            None
            if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor, x_normed: torch.Tensor | None = None) -> torch.Tensor:
        # x_normed: bn1(x) when the caller already computed it (it is a returned feature, see module docstring)
        activated = self.relu1(self.bn1(x) if x_normed is None else x_normed)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: `layer` holds the blocks (mdistiller's nesting, kept for checkpoint keys)."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor, x_normed: torch.Tensor | None = None) -> torch.Tensor:
        x = self.layer[0](x, x_normed)
        for block in self.layer[1:]:
            x = block(x)
        return x


class WideResNet(CifarClassifier):
    """WRN-depth-k for CIFAR (mdistiller's `WideResNet(depth, num_classes, widen_factor, dropRate)`).

    Args:
        depth (`int`): 6n + 4 layers (16, 40, ...).
        widen_factor (`int`): Width multiplier k of the three stages (16k, 32k, 64k channels).
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        drop_rate (`float`, *optional*, defaults to 0.0): Dropout inside each block (mdistiller's `dropRate`).
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "fc"

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UsageError(f"depth={depth} is not 6n + 4 with n >= 1; use e.g. 16 or 40.")
        if not 0.0 <= drop_rate < 1.0:
            raise UsageError(f"drop_rate={drop_rate} must be in [0, 1); the tables use 0.")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.num_features = channels[3]
        self.feature_info = [
            {"num_chs": channels[0], "reduction": 1, "module": "conv1"},
            {"num_chs": channels[1], "reduction": 1, "module": "block1"},
            {"num_chs": channels[2], "reduction": 2, "module": "block2"},
            {"num_chs": channels[3], "reduction": 4, "module": "block3"},
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    def _init_module(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """mdistiller's `get_bn_before_relu()`: the BN applied to each stage output before its ReLU
        (`block2.layer.0.bn1`, `block3.layer.0.bn1`, the final `bn1`), i.e. the BNs that produce `preact_feats[1:]`."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.conv1(x)
        feats, preact_feats = [x], [x]
        stages = (self.block1, self.block2, self.block3)
        # The BN that follows each stage output: it is both mdistiller's preact feature and the next layer's input.
        next_norms = (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)
        normed = None
        for stage, norm in list(zip(stages, next_norms))[: num_stages - 1]:
            x = stage(x, normed)
            normed = norm(x)
            feats.append(x)
            preact_feats.append(normed)
        return feats, preact_feats

    def _forward_final_map(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(preact_feats[-1])

    def _forward_final_norm(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return self.relu(preact_feats[-1])


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return cifar_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8), **kwargs)


default_cfgs = generate_default_cfgs(
    {name: _cfg() for name in ("cifar_wrn_16_1", "cifar_wrn_16_2", "cifar_wrn_40_1", "cifar_wrn_40_2")}
)


def _create(variant: str, depth: int, widen_factor: int, pretrained: bool, **kwargs: Any) -> WideResNet:
    return build_cifar_model(WideResNet, variant, pretrained, depth=depth, widen_factor=widen_factor, **kwargs)


@register_cifar_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-1 (mdistiller `wrn_16_1`); 180,916 parameters at 100 classes."""
    return _create("cifar_wrn_16_1", 16, 1, pretrained, **kwargs)


@register_cifar_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-2 (mdistiller `wrn_16_2`); 703,284 parameters at 100 classes."""
    return _create("cifar_wrn_16_2", 16, 2, pretrained, **kwargs)


@register_cifar_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-1 (mdistiller `wrn_40_1`); 569,780 parameters at 100 classes."""
    return _create("cifar_wrn_40_1", 40, 1, pretrained, **kwargs)


@register_cifar_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-40-2 (mdistiller `wrn_40_2`); 2,255,156 parameters at 100 classes."""
    return _create("cifar_wrn_40_2", 40, 2, pretrained, **kwargs)
