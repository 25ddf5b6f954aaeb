"""What a student is built and saved with: its stochastic depth (`--drop_path_rate`) and the preprocessing it was
trained and evaluated with (`--image_size`, `--interpolation`), written where transformers and timm read it."""

import dataclasses

import numpy as np
import pytest
import timm
import torch
from PIL import Image as PILImage
from transformers import (
    AutoImageProcessor,
    ConvNextImageProcessor,
    MobileNetV1ImageProcessor,
    SwinConfig,
    SwinForImageClassification,
    ViTImageProcessor,
)

from hfkd.commands.data import sized
from hfkd.data.saved_preprocessing import record_image_config
from hfkd.data.transforms import build_transforms, image_config_for_model
from hfkd.models.export import save_student
from hfkd.models.loading import load_image_classifier, load_image_processor

from .testing_utils import tiny_resnet


def _drop_probs(model: torch.nn.Module) -> list[float]:
    """The drop probability of every stochastic-depth module (timm's DropPath, transformers' *DropPath)."""
    return [float(m.drop_prob) for m in model.modules() if type(m).__name__.endswith("DropPath")]


def test_drop_path_rate_reaches_timm_and_transformers_students(tmp_path):
    timm_student = load_image_classifier("resnet10t", num_labels=3, pretrained=False, drop_path_rate=0.1)
    assert timm_student.config.model_args == {"drop_path_rate": 0.1}
    # timm spreads the rate over the blocks linearly: the last block gets all of it.
    reference = timm.create_model("resnet10t", num_classes=3, drop_path_rate=0.1)
    assert _drop_probs(timm_student) == _drop_probs(reference) and max(_drop_probs(reference)) == pytest.approx(0.1)
    timm_student.save_pretrained(tmp_path / "timm")
    reloaded = load_image_classifier(str(tmp_path / "timm"), num_labels=3, drop_path_rate=0.05)
    assert max(_drop_probs(reloaded)) == pytest.approx(0.05)
    assert max(_drop_probs(load_image_classifier(str(tmp_path / "timm")))) == pytest.approx(0.1)  # as saved

    config = SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=32, patch_size=4, window_size=4)
    SwinForImageClassification(config).save_pretrained(tmp_path / "swin")
    for pretrained in (True, False):
        swin = load_image_classifier(str(tmp_path / "swin"), num_labels=3, pretrained=pretrained, drop_path_rate=0.2)
        assert swin.config.drop_path_rate == 0.2 and max(_drop_probs(swin)) == pytest.approx(0.2)


def test_a_student_without_stochastic_depth_is_refused_by_name(tmp_path):
    tiny_resnet().save_pretrained(tmp_path / "hf_resnet")
    with pytest.raises(ValueError, match="ResNetConfig.*has no drop_path_rate.*Drop --drop_path_rate"):
        load_image_classifier(str(tmp_path / "hf_resnet"), num_labels=3, drop_path_rate=0.1)
    for name in ("vgg11", "resnet8x4"):
        with pytest.raises(ValueError, match=f"'{name}'.*takes no drop_path_rate"):
            load_image_classifier(name, num_labels=3, pretrained=False, drop_path_rate=0.1)


def _image(height: int, width: int) -> PILImage.Image:
    """A smooth image (resampling kernels agree on it up to rounding), with structure in every channel."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)]
    return PILImage.fromarray((127.5 + 127 * np.stack(channels, -1)).astype(np.uint8))


@pytest.mark.parametrize(
    "processor",
    [ConvNextImageProcessor(), ViTImageProcessor(), MobileNetV1ImageProcessor()],
    ids=["shortest_edge+crop_pct", "height+width", "shortest_edge+crop_size"],
)
@pytest.mark.parametrize("side, interpolation", [(24, "bilinear"), (96, "bicubic"), (128, "nearest")])
def test_a_saved_processor_preprocesses_as_the_run_evaluated(tmp_path, processor, side, interpolation):
    model = tiny_resnet()
    processor = type(processor).from_dict(processor.to_dict())
    config = sized(image_config_for_model(model, processor), side, model)
    config = dataclasses.replace(config, interpolation=interpolation, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    record_image_config(model, processor, config)
    processor.save_pretrained(tmp_path)
    saved = AutoImageProcessor.from_pretrained(tmp_path)
    # Images up to 64 px (CIFAR, MNIST) are square and resized whole; larger ones are resized and center-cropped.
    image = _image(40, 40) if side <= 64 else _image(150, 200)
    ours = build_transforms(config, train=False)(image)
    theirs = saved(image, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape == (3, side, side)
    # Same resize, crop, resampling and normalisation: on this smooth image PIL's and torchvision's kernels agree to
    # ~1e-5, while bicubic against bilinear differs by 5e-4 and nearest by 4e-3.
    assert (theirs - ours).abs().mean() < 1e-4


def test_a_timm_student_saves_the_size_and_resampling_it_was_trained_with(tmp_path):
    student = load_image_classifier("resnet10t", num_labels=3, pretrained=False)
    processor = load_image_processor("resnet10t")
    config = sized(image_config_for_model(student, processor), 24, student)
    config = dataclasses.replace(config, interpolation="nearest", mean=(0.5,), std=(0.25,))
    record_image_config(student, processor, config)
    assert processor.data_config["input_size"] == (3, 24, 24)  # the processor the trainer holds, updated in place
    save_student(student, str(tmp_path))
    data = timm.data.resolve_data_config(model=timm.create_model(f"local-dir:{tmp_path}", pretrained=True))
    assert tuple(data["input_size"]) == (3, 24, 24) and data["interpolation"] == "nearest"
    assert tuple(data["mean"]) == (0.5,) * 3 and tuple(data["std"]) == (0.25,) * 3
    assert data["crop_pct"] == 1.0  # 24 px is resized, not cropped, as hfkd evaluated it
    reloaded = load_image_classifier(str(tmp_path))
    assert image_config_for_model(reloaded, load_image_processor(str(tmp_path))).size == (24, 24)
