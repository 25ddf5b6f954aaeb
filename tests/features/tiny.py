"""Tiny random-init backbones for label-free distillation: foundation-model teachers (DINOv2, DINOv2 with registers,
DINOv3, CLIP's and SigLIP's vision towers) and students (transformers ResNetModel, timm through TimmWrapperModel)."""

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    ResNetConfig,
    ResNetModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    TimmWrapperConfig,
    TimmWrapperModel,
)

TEACHER_SIZE, STUDENT_SIZE = 32, 48
VIT = {"patch_size": 8, "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def tiny_teacher(kind: str, seed: int = 0, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "dinov2":
        return Dinov2Model(Dinov2Config(image_size=TEACHER_SIZE, **VIT, **changes))
    if kind == "dinov2_registers":
        return Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(image_size=TEACHER_SIZE, num_register_tokens=2, **VIT, **changes)
        )
    if kind == "dinov3":
        return DINOv3ViTModel(DINOv3ViTConfig(image_size=TEACHER_SIZE, num_register_tokens=2, **VIT, **changes))
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(image_size=TEACHER_SIZE, **VIT, **changes))
    if kind == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(image_size=TEACHER_SIZE, **VIT, **changes))
    raise ValueError(kind)


def tiny_resnet_backbone(seed: int = 1) -> ResNetModel:
    torch.manual_seed(seed)
    return ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))


def tiny_timm_backbone(architecture: str = "test_resnet", seed: int = 1, **model_args) -> TimmWrapperModel:
    torch.manual_seed(seed)
    config = TimmWrapperConfig(
        architecture=architecture, model_args=model_args or None, num_labels=0,
        pretrained_cfg={"input_size": [3, STUDENT_SIZE, STUDENT_SIZE], "crop_pct": 1.0, "interpolation": "bilinear",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 0},
    )  # fmt: skip
    return TimmWrapperModel(config)
