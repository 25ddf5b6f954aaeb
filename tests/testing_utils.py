"""Test helpers: tiny random-init models, synthetic data, and markers that skip (never fail) on CPU."""

import pytest
import torch
from datasets import Dataset
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

require_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
require_multi_gpu = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more CUDA GPUs")
slow = pytest.mark.slow


NUM_LABELS = 5
IMAGE_SIZE = 32


def tiny_resnet(num_labels: int = NUM_LABELS, *, wide: bool = False, seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    hidden = [16, 32] if wide else [8, 16]
    config = ResNetConfig(embedding_size=8, hidden_sizes=hidden, depths=[1, 1], num_labels=num_labels)
    return ResNetForImageClassification(config)


def tiny_vit(num_labels: int = NUM_LABELS, *, seed: int = 0) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def tiny_deit_with_teacher(
    num_labels: int = NUM_LABELS, *, image_size: int = IMAGE_SIZE, seed: int = 0
) -> DeiTForImageClassificationWithTeacher:
    """transformers' DeiT with a class and a distillation head (a distillation token), ViT-test sized."""
    torch.manual_seed(seed)
    config = DeiTConfig(
        image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels,
    )  # fmt: skip
    return DeiTForImageClassificationWithTeacher(config)


def tiny_timm_distilled_deit(
    num_labels: int = NUM_LABELS, *, image_size: int = IMAGE_SIZE, seed: int = 0
) -> TimmWrapperForImageClassification:
    """timm's deit_tiny_distilled_patch16_224 (`VisionTransformerDistilled`) at ViT-test size through TimmWrapper,
    with a pretrained_cfg of its input size (what its image processor reads)."""
    torch.manual_seed(seed)
    config = TimmWrapperConfig(
        architecture="deit_tiny_distilled_patch16_224",
        model_args={"img_size": image_size, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        pretrained_cfg={"input_size": [3, image_size, image_size], "crop_pct": 1.0, "interpolation": "bicubic",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": num_labels,
                        "classifier": ["head", "head_dist"]},
        num_labels=num_labels,
    )  # fmt: skip
    return TimmWrapperForImageClassification(config)


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """`model` with seeded noise added to every parameter (each from a generator seeded `seed`), so that a tiny
    random-init teacher gives confident, varied outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * scale)
    return model


def synthetic_dataset(n: int = 16, *, seed: int = 0, num_labels: int = NUM_LABELS) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.tolist()}).with_format("torch")


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
        "labels": torch.tensor([int(e["labels"]) for e in examples]),
    }
