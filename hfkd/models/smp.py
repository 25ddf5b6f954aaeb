"""The reference segmentation networks of DIST and CWD (DeepLabV3 and PSPNet on dilated ResNets, output stride 8),
built by segmentation-models-pytorch (smp) on timm encoders, as transformers models.

Why smp: it is the maintained library of these architectures (DeepLabV3, PSPNet, UPerNet, FPN, ... on any timm
encoder); its timm encoders take `output_stride=8` and dilate layer3/layer4 with the references' contracted first
block (1 then 2, 2 then 4). torchvision's DeepLabV3 exists for ResNet-50/101 only (its BasicBlock cannot dilate) and
transformers has neither. `SmpForSemanticSegmentation` wraps an smp model in a `PreTrainedModel` (config
`model_type="hfkd_smp"`, registered with `AutoConfig` and `AutoModelForSemanticSegmentation` when this module is
imported), adds the FCN auxiliary head the references train (smp has none: its `aux_params` is an image-level
classifier) and computes their loss: per-pixel CE on the logits resized to the labels, plus 0.4 x the auxiliary CE.
A saved student therefore loads with `AutoModelForSemanticSegmentation.from_pretrained` and
`pipeline("image-segmentation")` after `import hfkd.models.smp`, and `model.smp_model` is the plain
smp model (`smp_model.save_pretrained(...)` writes smp's own format).

What differs from the references' networks (each recipe repeats it): the stem is timm's `resnet18d`/`resnet101d`
(3x3 convs 32-32-64 with average-pool downsampling) where DIST's is 64-64-128 and mmseg's 32-32-64 (V1c); smp's
DeepLabV3 head has no Dropout(0.1) before the classifier; smp's PSPNet head is a 1x1 bottleneck and Dropout2d(0.2)
where the references use a 3x3 conv and Dropout(0.1); ImageNet weights are timm's, not the references' files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForSemanticSegmentation, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hfkd.data.batch import IGNORE_INDEX
from hfkd.utils.errors import UsageError

MODEL_TYPE = "hfkd_smp"

# The DIST / CWD reference networks, by the names people use for them: (architecture, encoder, decoder width).
REFERENCE_NETWORKS = {
    "deeplabv3-resnet18": ("DeepLabV3", "tu-resnet18d", 128),
    "deeplabv3-resnet50": ("DeepLabV3", "tu-resnet50d", 256),
    "deeplabv3-resnet101": ("DeepLabV3", "tu-resnet101d", 256),
    "pspnet-resnet18": ("PSPNet", "tu-resnet18d", 128),
    "pspnet-resnet50": ("PSPNet", "tu-resnet50d", 512),
    "pspnet-resnet101": ("PSPNet", "tu-resnet101d", 512),
}


class SmpSegmentationConfig(PretrainedConfig):
    """An smp segmentation network: `architecture` (`"DeepLabV3"`, `"PSPNet"`, any `smp.create_model` name) on
    `encoder_name` (`"tu-<timm model>"` or an smp encoder) at `output_stride` 8 or 16, `decoder_channels` wide, with an
    FCN auxiliary head on the encoder's second-to-last stage when `auxiliary_head` (loss weight
    `auxiliary_loss_weight`, 0.4 as the references), pixels labelled `semantic_loss_ignore_index` ignored."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        architecture: str = "DeepLabV3",
        encoder_name: str = "tu-resnet18d",
        output_stride: int = 8,
        decoder_channels: int = 128,
        auxiliary_head: bool = True,
        auxiliary_channels: int | None = None,
        auxiliary_loss_weight: float = 0.4,
        semantic_loss_ignore_index: int = IGNORE_INDEX,
        num_channels: int = 3,
        smp_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.architecture, self.encoder_name, self.output_stride = architecture, encoder_name, output_stride
        self.decoder_channels, self.auxiliary_head = decoder_channels, auxiliary_head
        self.auxiliary_channels, self.auxiliary_loss_weight = auxiliary_channels, auxiliary_loss_weight
        self.semantic_loss_ignore_index, self.num_channels = semantic_loss_ignore_index, num_channels
        self.smp_kwargs = dict(smp_kwargs or {})
        super().__init__(**kwargs)


@dataclass
class SmpSegmenterOutput(ModelOutput):
    """`SemanticSegmenterOutput` plus the auxiliary head's logits (both at the network's output stride)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    auxiliary_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def _smp_model(config: SmpSegmentationConfig, encoder_weights: str | None) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise UsageError(
            f"The {config.architecture} network is built by segmentation-models-pytorch, which is not installed: "
            "pip install 'hfkd[segmentation]'."
        ) from None

    arch = config.architecture.lower()
    kwargs: dict[str, Any] = {"upsampling": 1, **config.smp_kwargs}
    if arch == "deeplabv3":
        kwargs.update(encoder_output_stride=config.output_stride, decoder_channels=config.decoder_channels)
    elif arch == "pspnet":
        # smp's PSPNet cuts the encoder at stride 8 by default; the references dilate all five stages instead.
        kwargs.update(encoder_depth=5, output_stride=config.output_stride, psp_out_channels=config.decoder_channels)
    try:
        return smp.create_model(
            config.architecture, encoder_name=config.encoder_name, encoder_weights=encoder_weights,
            in_channels=config.num_channels, classes=config.num_labels, **kwargs,
        )  # fmt: skip
    except KeyError as err:
        raise UsageError(f"segmentation-models-pytorch: {err.args[0]}") from None


class FCNHead(nn.Sequential):
    """The references' auxiliary head (mmseg's FCNHead, DIST's `_FCNHead`): 3x3 conv, BN, ReLU, Dropout(0.1), 1x1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )


class SmpForSemanticSegmentation(PreTrainedModel):
    """An smp segmentation network as a transformers model (see the module docstring)."""

    config_class = SmpSegmentationConfig
    main_input_name = "pixel_values"
    base_model_prefix = "smp_model"

    def __init__(self, config: SmpSegmentationConfig, encoder_weights: str | None = None) -> None:
        super().__init__(config)
        self.smp_model = _smp_model(config, encoder_weights)
        self.auxiliary_head = None
        if config.auxiliary_head:
            in_channels = self.smp_model.encoder.out_channels[-2]
            channels = config.auxiliary_channels or max(in_channels // 4, 16)
            self.auxiliary_head = FCNHead(in_channels, channels, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # smp and timm initialise their own modules; only the auxiliary head is ours (PyTorch's defaults).
        return

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SmpSegmenterOutput:
        features = self.smp_model.encoder(pixel_values)
        decoded = self.smp_model.decoder(features)
        logits = self.smp_model.segmentation_head(decoded)
        auxiliary = self.auxiliary_head(features[-2]) if self.auxiliary_head is not None else None
        loss = None
        if labels is not None:
            loss = self.segmentation_loss(logits, labels)
            if auxiliary is not None:
                loss = loss + self.config.auxiliary_loss_weight * self.segmentation_loss(auxiliary, labels)
        hidden = tuple(features[1:]) if output_hidden_states else None
        return SmpSegmenterOutput(loss=loss, logits=logits, auxiliary_logits=auxiliary, hidden_states=hidden)

    def segmentation_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-pixel CE of logits resized to the labels (bilinear), pixels labelled the ignore index left out."""
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), labels.long(), ignore_index=self.config.semantic_loss_ignore_index)


def reference_network(
    name: str, *, num_labels: int, id2label: dict[int, str] | None = None, pretrained: bool = True, **overrides: Any
) -> SmpForSemanticSegmentation:
    """One of `REFERENCE_NETWORKS` (`"deeplabv3-resnet18"`, ...), with timm's ImageNet encoder weights when
    `pretrained` (they come from the Hub), random init otherwise."""
    try:
        architecture, encoder, channels = REFERENCE_NETWORKS[name.lower()]
    except KeyError:
        raise UsageError(f"Unknown reference network {name!r}; known: {', '.join(REFERENCE_NETWORKS)}.") from None
    config = SmpSegmentationConfig(
        architecture=architecture, encoder_name=encoder, decoder_channels=channels, num_labels=num_labels,
        id2label=id2label or {i: str(i) for i in range(num_labels)}, **overrides,
    )  # fmt: skip
    return SmpForSemanticSegmentation(config, encoder_weights="imagenet" if pretrained else None)


AutoConfig.register(MODEL_TYPE, SmpSegmentationConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(SmpSegmentationConfig, SmpForSemanticSegmentation, exist_ok=True)
