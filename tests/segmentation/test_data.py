"""Segmentation data: joint transforms keep image and mask aligned, the checks name the row and file, the
Cityscapes layout maps to train ids, and the collator pads without scoring the padding."""

import random

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

from hfkd.data.transforms import ImageConfig
from hfkd.tasks.segmentation.data import (
    CITYSCAPES_TRAIN_IDS,
    SegmentationCollator,
    SegmentationTransform,
    check_segmentation_rows,
    detect_segmentation_columns,
    load_segmentation_dataset,
    reduce_labels_lookup,
)
from hfkd.tasks.segmentation.transforms import IGNORE_INDEX, CropSettings, image_tensor, mask_tensor, train_crop
from hfkd.utils.errors import UsageError


def _pair(height: int = 20, width: int = 30, seed: int = 0) -> tuple[PILImage.Image, PILImage.Image]:
    """An image whose red channel encodes the mask (value = 40 * class), so alignment can be read back."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 4, size=(height, width)).astype(np.uint8)
    pixels = np.stack([mask * 40, np.zeros_like(mask), np.zeros_like(mask)], axis=-1).astype(np.uint8)
    return PILImage.fromarray(pixels), PILImage.fromarray(mask)


@pytest.mark.parametrize("scale_range", [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (0.5, 2.0)])
def test_train_crop_keeps_image_and_mask_aligned_and_pads_with_ignore(scale_range):
    image, mask = _pair()
    settings = CropSettings(crop_size=(24, 24), scale_range=scale_range)
    for draw in range(8):
        pixels, target, padded = train_crop(image_tensor(image), mask_tensor(mask), settings, random.Random(draw))
        assert pixels.shape == (3, 24, 24) and target.shape == (24, 24) and padded.shape == (24, 24)
        assert target[padded].eq(IGNORE_INDEX).all() and pixels[:, padded].eq(0).all()
        inside = ~padded
        # nearest-resized masks hold only original classes; where the image is not blended at a class border, the
        # red channel still encodes the class of the mask pixel
        assert set(target[inside].unique().tolist()) <= {0, 1, 2, 3}
        if scale_range == (1.0, 1.0):
            assert torch.equal(pixels[0][inside], (target[inside] * 40).to(torch.uint8))


def test_scale_step_draws_the_references_discrete_factors():
    settings = CropSettings(crop_size=(8, 8), scale_range=(0.5, 2.0), scale_step=0.1)
    draws = {round(settings.draw_scale(random.Random(i)), 6) for i in range(400)}
    assert draws == {round(0.5 + k / 10, 6) for k in range(16)}


def test_transform_is_a_function_of_seed_epoch_and_index():
    image, mask = _pair()
    rows = {"image": [image, image], "label": [mask, mask], "sample_index": [3, 4]}
    config = ImageConfig(size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    make = lambda: SegmentationTransform(  # noqa: E731
        "image", "label", config, num_labels=4, crop=CropSettings(crop_size=(16, 16)), seed=7
    )
    first, again = make()(rows), make()(rows)
    assert torch.equal(first["pixel_values"][0], again["pixel_values"][0])
    assert not torch.equal(first["labels"][0], first["labels"][1])  # other index, other crop
    later = make()
    later.set_epoch(1)
    assert not torch.equal(later(rows)["labels"][0], first["labels"][0])


def test_teacher_of_other_statistics_gets_the_same_crop_normalised_its_way():
    image, mask = _pair()
    student = ImageConfig(size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    teacher = ImageConfig(size=16, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = SegmentationTransform(
        "image", "label", student, [teacher], num_labels=4, crop=CropSettings(crop_size=(16, 16))
    )({"image": [image], "label": [mask]})
    student_pixels, teacher_pixels = out["pixel_values"][0], out["teacher_pixel_values"][0]
    image_area = out["labels"][0] != IGNORE_INDEX  # padding is each model's mean colour (0 after normalising)
    torch.testing.assert_close((student_pixels * 0.25 + 0.5)[:, image_area], teacher_pixels[:, image_area])
    assert student_pixels[:, ~image_area].eq(0).all() and teacher_pixels[:, ~image_area].eq(0).all()


def _dataset(images, masks) -> Dataset:
    return Dataset.from_dict(
        {"image": images, "label": masks}, features=Features({"image": Image(), "label": Image()})
    )


def test_checks_name_the_row_and_the_fix(tmp_path):
    image, mask = _pair()
    small = mask.resize((10, 10))
    with pytest.raises(UsageError, match=r"row 1 .*10x10 pixels, its image 30x20"):
        check_segmentation_rows(_dataset([image, image], [mask, small]), "image", "label", 4)
    with pytest.raises(UsageError, match=r"row 0 .*class ids \[3\].*--reduce_labels"):
        check_segmentation_rows(_dataset([image], [mask]), "image", "label", 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    mask.save(tmp_path / "ok.png")
    image.save(tmp_path / "img.png")
    data = (
        Dataset.from_dict({"image": [str(tmp_path / "img.png")], "label": [str(broken)]})
        .cast_column("image", Image())
        .cast_column("label", Image())
    )
    with pytest.raises(UsageError, match=r"mask of row 0 \(.*broken.png\) cannot be read"):
        check_segmentation_rows(data, "image", "label", 4)
    rgb = PILImage.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(UsageError, match="colour-coded masks"):
        check_segmentation_rows(_dataset([image], [rgb]), "image", "label", 4)
    check_segmentation_rows(_dataset([image], [mask]), "image", "label", 4)  # a good row passes


def test_reduce_labels_as_transformers():
    table = reduce_labels_lookup()
    assert table[0] == IGNORE_INDEX and table[1] == 0 and table[150] == 149 and table[255] == IGNORE_INDEX


def test_columns_are_detected_and_a_classification_dataset_is_refused():
    image, mask = _pair()
    assert detect_segmentation_columns(_dataset([image], [mask])) == ("image", "label")
    annotated = (
        Dataset.from_dict({"pixel_values": [image], "annotation": [mask]})
        .cast_column("pixel_values", Image())
        .cast_column("annotation", Image())
    )
    assert detect_segmentation_columns(annotated) == ("pixel_values", "annotation")
    classification = Dataset.from_dict({"image": [image], "label": [3]}).cast_column("image", Image())
    with pytest.raises(UsageError, match="not masks"):
        detect_segmentation_columns(classification)


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    ids = np.array([[7, 8, 26, 0], [33, 255, 1, 24]], dtype=np.uint8)
    for split in ("train", "val"):
        (root / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (root / "gtFine" / split / "aachen").mkdir(parents=True)
        PILImage.new("RGB", (4, 2)).save(root / "leftImg8bit" / split / "aachen" / "a_000001_leftImg8bit.png")
        PILImage.fromarray(ids).save(root / "gtFine" / split / "aachen" / "a_000001_gtFine_labelIds.png")
    data = load_segmentation_dataset(str(root))
    assert len(data["train"]) == len(data["eval"]) == 1 and len(data.id2label) == 19
    out = SegmentationTransform("image", "label", ImageConfig(size=4), num_labels=19, lookup=data.label_lookup)(
        data["eval"][:1]
    )
    expected = [[CITYSCAPES_TRAIN_IDS[7], CITYSCAPES_TRAIN_IDS[8], 13, 255], [18, 255, 255, 11]]
    assert out["labels"][0].tolist() == expected
    with pytest.raises(UsageError, match="max_eval_samples must be >= 1"):  # as classification refuses it
        load_segmentation_dataset(str(root), max_eval_samples=0)


def test_collator_pads_images_with_zero_and_masks_with_ignore():
    examples = [
        {"pixel_values": torch.ones(3, 4, 5), "labels": torch.zeros(4, 5, dtype=torch.long), "sample_index": 0},
        {"pixel_values": torch.ones(3, 6, 3), "labels": torch.ones(6, 3, dtype=torch.long), "sample_index": 1},
    ]
    batch = SegmentationCollator()(examples)
    assert batch["pixel_values"].shape == (2, 3, 6, 5) and batch["labels"].shape == (2, 6, 5)
    assert batch["labels"][0, 4:].eq(IGNORE_INDEX).all() and batch["labels"][1, :, 3:].eq(IGNORE_INDEX).all()
    assert batch["pixel_values"][0, :, 4:].eq(0).all() and batch["sample_index"].tolist() == [0, 1]
