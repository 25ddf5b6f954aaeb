"""The CIFAR MobileNetV2 of the distillation tables: mdistiller's `mobile_half` (expansion 6, width 0.5).

Same network as mdistiller `mdistiller/models/cifar/mobilenetv2.py` (= RepDistiller `models/mobilenetv2.py`),
`MobileNetV2(T=6, feature_dim=num_classes, input_size=32, width_mult=0.5)`: a stride-2 3x3 conv-BN-ReLU stem with 16
channels, seven groups of inverted residuals (t, c, n, s) = (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1) with c scaled by 0.5 (every block keeps its expansion 1x1 conv, even at
t = 1, as upstream), a 1x1 conv-BN-ReLU to 1280 channels, global average pooling and `classifier.0` (a Linear inside
an nn.Sequential). Module names match mdistiller's, so its checkpoints load with `load_state_dict`.

Features (5 positions, as upstream): the stem output (16 channels, 16x16) and the outputs of block groups 1, 2, 4 and
6 (12@16x16, 16@8x8, 48@4x4, 160@2x2). Those are linear-bottleneck outputs with no ReLU, and mdistiller returns no
`preact_feats` for this network, so `preact_feats` here are the same tensors as `feats`. The last feature map
(`forward_features`) is the 1280-channel 1x1 conv output at 2x2.
"""

from __future__ import annotations

from typing import Any

import torch
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


def _conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; identity shortcut when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise UsageError(f"stride={stride} is not supported by InvertedResidual; use 1 or 2.")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(CifarClassifier):
    """CIFAR MobileNetV2 (mdistiller's `mobilenetv2_T_w(T, W)`; the tables use T=6, W=0.5).

    Args:
        expand_ratio (`int`, *optional*, defaults to 6): Expansion T of all groups but the first.
        width_mult (`float`, *optional*, defaults to 0.5): Width multiplier W.
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "classifier"
    classifier_in_sequential = True
    # Feature positions after the stem: the block groups whose outputs mdistiller returns (1, 2, 4, 6).
    feature_groups = ((0, 1), (2,), (3, 4), (5, 6))

    def __init__(
        self,
        expand_ratio: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        t = expand_ratio
        # (expansion, channels, repeats, first stride) of the seven block groups
        settings = [
            [1, 16, 1, 1],
            [t, 24, 2, 1],
            [t, 32, 3, 2],
            [t, 64, 4, 2],
            [t, 96, 3, 1],
            [t, 160, 3, 2],
            [t, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        reductions = [2]
        for expansion, channels, repeats, stride in settings:
            output_channel = int(channels * width_mult)
            layers = []
            for block_stride in [stride] + [1] * (repeats - 1):
                layers.append(InvertedResidual(input_channel, output_channel, block_stride, expansion))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
            reductions.append(reductions[-1] * stride)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.num_features = self.last_channel
        self.feature_info = [{"num_chs": int(32 * width_mult), "reduction": 2, "module": "conv1"}]
        for group in self.feature_groups:
            last = group[-1]
            self.feature_info.append(
                {
                    "num_chs": int(settings[last][1] * width_mult),
                    "reduction": reductions[last + 1],
                    "module": f"blocks.{last}",
                }
            )
        self._make_head(num_classes, global_pool)
        self.init_weights()

    _init_module = staticmethod(normal_fan_out_init)

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.conv1(x)
        feats = [x]
        for group in self.feature_groups[: num_stages - 1]:
            for index in group:
                x = self.blocks[index](x)
            feats.append(x)
        return feats, list(feats)

    def _forward_final_map(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv2(feats[-1])


default_cfgs = generate_default_cfgs(
    {"cifar_mobilenetv2": cifar_cfg(first_conv="conv1.0", classifier="classifier.0", pool_size=(2, 2))}
)


@register_cifar_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """MobileNetV2 with T=6, width 0.5, the tables' "MobileNetV2" (mdistiller `mobile_half`); 812,836 parameters at 100
    classes."""
    return build_cifar_model(CifarMobileNetV2, "cifar_mobilenetv2", pretrained, **kwargs)
