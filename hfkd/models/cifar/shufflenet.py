"""The CIFAR ShuffleNets of the distillation tables: ShuffleV1 (groups 3) and ShuffleV2 (net size 1).

Same networks as mdistiller `mdistiller/models/cifar/ShuffleNetv1.py` and `ShuffleNetv2.py` (= RepDistiller
`models/ShuffleNetv1.py`, `models/ShuffleNetv2.py`, after kuangliu's pytorch-cifar). Both start with a 1x1
conv-BN-ReLU stem to 24 channels at full resolution and halve the resolution at the start of each of three stages.
Module names match mdistiller's, so its checkpoints load with `load_state_dict`. No custom weight init (PyTorch
defaults), as upstream.

- ShuffleV1: stages of 4, 8, 4 bottlenecks with widths 240, 480, 960 and 3 groups; a stride-2 bottleneck concatenates
  its output with a 3x3 average-pooled shortcut. Features: the stem (24@32x32) and each stage after ReLU (240@16,
  480@8, 960@4); `preact_feats` are the last bottleneck's sum/concat before its ReLU.
- ShuffleV2: each stage is a down-sampling block then 3, 7, 3 basic blocks with widths 116, 232, 464, then a 1x1
  conv-BN-ReLU to 1024 channels before pooling. Features: the stem and each stage output (after the channel
  shuffle); `preact_feats` are, as upstream, the last basic block's concat [passed-through half, bn3 output] before
  the ReLU and before the shuffle, so `feats[i]` is the channel shuffle of relu(`preact_feats[i]`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs
from torch import nn

from hfkd.models.cifar._base import CifarClassifier, build_cifar_model, cifar_cfg, register_cifar_model, run_stages
from hfkd.utils.errors import UsageError


class ShuffleBlock(nn.Module):
    """Channel shuffle: (N, g * c, H, W) -> (N, c * g, H, W)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        return x.reshape(n, self.groups, c // self.groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleV1Bottleneck(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add the input (stride 1) or concat it pooled (stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        # upstream: the first 1x1 conv after the 24-channel stem is not grouped
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class CifarShuffleNetV1(CifarClassifier):
    """CIFAR ShuffleNetV1 (mdistiller's `ShuffleNet(cfg)`; the tables use `ShuffleV1`).

    Args:
        out_planes (`tuple[int, int, int]`, *optional*, defaults to `(240, 480, 960)`): Stage widths.
        num_blocks (`tuple[int, int, int]`, *optional*, defaults to `(4, 8, 4)`): Bottlenecks per stage.
        groups (`int`, *optional*, defaults to 3): Groups of the 1x1 convolutions.
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "linear"

    def __init__(
        self,
        out_planes: tuple[int, ...] = (240, 480, 960),
        num_blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if len(out_planes) != 3 or len(num_blocks) != 3:
            raise UsageError(f"out_planes={out_planes} and num_blocks={num_blocks} need 3 entries, one per stage.")
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.num_features = out_planes[2]
        self.feature_info = [{"num_chs": 24, "reduction": 1, "module": "bn1"}] + [
            {"num_chs": planes, "reduction": 2 ** (i + 1), "module": f"layer{i + 1}"}
            for i, planes in enumerate(out_planes)
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # the stride-2 block concatenates its input, so it produces only the remaining channels
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(ShuffleV1Bottleneck(self.in_planes, out_planes - cat_planes, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return run_stages(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3), num_stages)


class SplitBlock(nn.Module):
    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class ShuffleV2BasicBlock(nn.Module):
    """Split the channels; 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU on one half; concat; shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=1, padding=1, groups=in_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlock(groups=2)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = self.split(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
        preact = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(preact)], 1))
        return out, torch.cat([x1, preact], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class ShuffleV2DownBlock(nn.Module):
    """Two stride-2 branches (depthwise then 1x1; 1x1, depthwise, 1x1), concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=2, padding=1, groups=mid_channels, bias=False
        )
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


SHUFFLENETV2_CFGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class CifarShuffleNetV2(CifarClassifier):
    """CIFAR ShuffleNetV2 (mdistiller's `ShuffleNetV2(net_size)`; the tables use `ShuffleV2`, net size 1).

    Args:
        net_size (`float`, *optional*, defaults to 1): One of 0.2, 0.3, 0.5, 1, 1.5, 2 (upstream's configs).
        num_classes (`int`, *optional*, defaults to 100): Classes; 0 gives no classifier.
        in_chans (`int`, *optional*, defaults to 3): Input channels.
        global_pool (`str`, *optional*, defaults to `"avg"`): timm pooling type.
    """

    classifier_attr = "linear"

    def __init__(
        self, net_size: float = 1, num_classes: int = 100, in_chans: int = 3, global_pool: str = "avg"
    ) -> None:
        super().__init__()
        if net_size not in SHUFFLENETV2_CFGS:
            raise UsageError(f"net_size={net_size} has no config; use one of {sorted(SHUFFLENETV2_CFGS)}.")
        out_channels = SHUFFLENETV2_CFGS[net_size]["out_channels"]
        num_blocks = SHUFFLENETV2_CFGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(in_chans, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_features = out_channels[3]
        self.feature_info = [{"num_chs": 24, "reduction": 1, "module": "bn1"}] + [
            {"num_chs": out_channels[i], "reduction": 2 ** (i + 1), "module": f"layer{i + 1}"} for i in range(3)
        ]
        self._make_head(num_classes, global_pool)
        self.init_weights()

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self.in_channels, out_channels)]
        layers += [ShuffleV2BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def _forward_stages(self, x: torch.Tensor, num_stages: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return run_stages(F.relu(self.bn1(self.conv1(x))), (self.layer1, self.layer2, self.layer3), num_stages)

    def _forward_final_map(self, feats: list[torch.Tensor], preact_feats: list[torch.Tensor]) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(feats[-1])))


default_cfgs = generate_default_cfgs(
    {
        "cifar_shufflenetv1": cifar_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4)),
        "cifar_shufflenetv2": cifar_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4)),
    }
)


@register_cifar_model
def cifar_shufflenetv1(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV1:
    """ShuffleNetV1, groups 3, widths (240, 480, 960), blocks (4, 8, 4) (mdistiller `ShuffleV1`); 949,258 parameters
    at 100 classes."""
    return build_cifar_model(CifarShuffleNetV1, "cifar_shufflenetv1", pretrained, **kwargs)


@register_cifar_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """ShuffleNetV2, net size 1, widths (116, 232, 464, 1024) (mdistiller `ShuffleV2`); 1,355,528 parameters at 100
    classes."""
    return build_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, **kwargs)
