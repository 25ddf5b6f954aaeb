"""CIFAR-100 architectures of the distillation tables (mdistiller / RepDistiller), registered as timm models.

Importing this package registers every name in `CIFAR_MODELS` with `timm.models.register_model`, so
`timm.create_model("cifar_resnet8x4", num_classes=100)` and
`TimmWrapperForImageClassification(TimmWrapperConfig(architecture="cifar_resnet8x4", num_labels=100))` work offline.
The networks are mdistiller's (`mdistiller/models/cifar/*.py`, the same files as HobbitLong/RepDistiller `models/`),
with the same parameter names, so mdistiller checkpoints load with `load_state_dict`.

Every model also implements:

- `forward_intermediates(x)`: `(last_feature_map, feats)`, where `feats` is mdistiller's `feats["feats"]` (the stem
  output, then every stage output). `TimmWrapperModel` / `TimmWrapperForImageClassification` return this list as
  `hidden_states` when called with `output_hidden_states=True`.
- `forward_preact_features(x)`: `{"feats", "preact_feats", "pooled_feat", "logits"}` with mdistiller's names and
  contents, for losses that need pre-activation features (`preact_feats`: the same positions before the last ReLU).
- `init_weights()`: mdistiller's initialisation, to restore after `TimmWrapperForImageClassification(config)`
  re-initialises the weights with its generic scheme.

`CIFAR_ALIASES` maps mdistiller's model-dict names to ours where the name is unambiguous: it leaves out `vgg11`,
`vgg13`, `vgg16`, `vgg19`, `resnet18` and `resnet50` (timm has ImageNet models of those names; `ResNet18`/`ResNet50`
differ from them only by case) and `MobileNetV2` (hfkd's `mobilenet-v2` is the ImageNet width-1.0 model; use
`mobile_half` or `cifar_mobilenetv2`).
"""

# Importing each architecture's module registers it with timm.
from hfkd.models.cifar import mobilenetv2, resnet, resnetv2, shufflenet, vgg, wrn  # noqa: F401
from hfkd.models.cifar._base import CIFAR100_MEAN, CIFAR100_STD, CifarClassifier

CIFAR_MODELS: list[str] = [
    "cifar_resnet8",
    "cifar_resnet14",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_resnet8x4",
    "cifar_resnet32x4",
    "cifar_wrn_16_1",
    "cifar_wrn_16_2",
    "cifar_wrn_40_1",
    "cifar_wrn_40_2",
    "cifar_vgg8",
    "cifar_vgg11",
    "cifar_vgg13",
    "cifar_vgg16",
    "cifar_vgg19",
    "cifar_mobilenetv2",
    "cifar_shufflenetv1",
    "cifar_shufflenetv2",
    "cifar_resnet18",
    "cifar_resnet50",
]

CIFAR_ALIASES: dict[str, str] = {
    "resnet8": "cifar_resnet8",
    "resnet14": "cifar_resnet14",
    "resnet20": "cifar_resnet20",
    "resnet32": "cifar_resnet32",
    "resnet44": "cifar_resnet44",
    "resnet56": "cifar_resnet56",
    "resnet110": "cifar_resnet110",
    "resnet8x4": "cifar_resnet8x4",
    "resnet32x4": "cifar_resnet32x4",
    "wrn_16_1": "cifar_wrn_16_1",
    "wrn_16_2": "cifar_wrn_16_2",
    "wrn_40_1": "cifar_wrn_40_1",
    "wrn_40_2": "cifar_wrn_40_2",
    "vgg8": "cifar_vgg8",
    "mobile_half": "cifar_mobilenetv2",
    "ShuffleV1": "cifar_shufflenetv1",
    "ShuffleV2": "cifar_shufflenetv2",
}

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_ALIASES",
    "CIFAR_MODELS",
    "CifarClassifier",
    "mobilenetv2",
    "resnet",
    "resnetv2",
    "shufflenet",
    "vgg",
    "wrn",
]
