"""Detection data: columns are found, COCO folders load with contiguous ids, bad rows are named with the fix, boxes
stay on the pixels they box through resize, flip and crop, and the collator keeps every object."""

import json
import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage

from hfkd.data.transforms import ImageConfig
from hfkd.tasks.detection.data import (
    DetectionCollator,
    DetectionTransform,
    check_detection_rows,
    detect_detection_columns,
    detection_features,
    load_coco_folder,
    resized_shape,
)
from hfkd.utils.errors import UsageError

IDENTITY = ImageConfig(mean=(0.0,) * 3, std=(1.0,) * 3)  # pixel_values are the [0, 1] pixels


# -- columns -------------------------------------------------------------------------------------------------------


def test_columns_of_the_run_object_detection_layout_are_found():
    assert detect_detection_columns(["image_id", "image", "width", "height", "objects"]) == ("image", "objects")
    assert detect_detection_columns(["img", "annotations"]) == ("img", "annotations")
    assert detect_detection_columns(["photo", "boxes"], objects_column="boxes") == ("photo", "boxes")
    data = DatasetDict({"train": Dataset.from_dict({"image": [None], "objects": [None]})})
    assert detect_detection_columns(data) == ("image", "objects")


def test_missing_columns_name_the_columns_present_and_the_flag():
    with pytest.raises(UsageError, match=r"no objects column.*columns are: image, label\. Set --label_column"):
        detect_detection_columns(["image", "label"])
    with pytest.raises(UsageError, match=r"no image column.*columns are: file, objects\. Set --image_column"):
        detect_detection_columns(["file", "objects"])
    with pytest.raises(UsageError, match=r"no column 'boxes'.*Fix --label_column"):
        detect_detection_columns(["image", "objects"], objects_column="boxes")
    with pytest.raises(UsageError, match=r"no column 'pic'.*Fix --image_column"):
        detect_detection_columns(["image", "objects"], image_column="pic")


# -- COCO folders --------------------------------------------------------------------------------------------------


def _write_coco(root, split, images, annotations, categories, nested=False):
    folder = root / ("images" if nested else "") / split
    folder.mkdir(parents=True)
    for info in images:
        PILImage.new("RGB", (info["width"], info["height"]), (info["id"], 0, 0)).save(folder / info["file_name"])
    (root / "annotations").mkdir(exist_ok=True)
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def test_coco_folder_maps_category_ids_to_contiguous_and_keeps_images_without_objects(tmp_path):
    images = [
        {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 9, "file_name": "b.png", "width": 20, "height": 50},
        {"id": 11, "file_name": "c.png", "width": 10, "height": 10},  # no annotation
    ]
    annotations = [
        {"id": 100, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 5], "area": 42.0, "iscrowd": 0},
        {"id": 101, "image_id": 7, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 300.0, "iscrowd": 0},
        {"id": 102, "image_id": 9, "category_id": 3, "bbox": [0, 0, 20, 50], "area": 1000.0},
        {"id": 103, "image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 1},  # crowd
    ]
    _write_coco(tmp_path, "train2017", images, annotations, CATEGORIES)
    _write_coco(tmp_path, "val2017", images[:1], annotations[:1], CATEGORIES, nested=True)
    data = load_coco_folder(str(tmp_path))
    assert set(data) == {"train2017", "val2017"}
    assert data.id2label == {0: "person", 1: "car", 2: "toothbrush"}  # sorted by COCO id
    assert data.category_ids == {0: 1, 1: 3, 2: 90}
    assert data["train2017"].features["objects"]["category"].feature.names == ["person", "car", "toothbrush"]
    rows = {row["image_id"]: row for row in data["train2017"]}
    assert sorted(rows) == [7, 9, 11]
    assert rows[7]["objects"] == {
        "id": [100, 101],
        "area": [42.0, 300.0],
        "bbox": [[1.0, 2.0, 10.0, 5.0], [5.0, 5.0, 20.0, 20.0]],
        "category": [2, 0],
    }
    assert rows[9]["objects"]["category"] == [1] and rows[9]["objects"]["id"] == [102]  # the crowd box is left out
    assert rows[11]["objects"] == {"id": [], "area": [], "bbox": [], "category": []}
    assert (rows[9]["width"], rows[9]["height"]) == (20, 50) and rows[9]["image"].size == (20, 50)
    assert rows[9]["image"].getpixel((0, 0)) == (9, 0, 0)  # the file of image 9
    assert len(data["val2017"]) == 1 and data["val2017"][0]["objects"]["category"] == [2]
    check_detection_rows(data["train2017"], "image", "objects", 3)


def test_coco_folder_errors_name_the_file_and_annotation(tmp_path):
    image = {"id": 1, "file_name": "a.png", "width": 8, "height": 8}
    bad = {"id": 5, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2]}
    _write_coco(tmp_path / "unknown", "train", [image], [bad], CATEGORIES)
    with pytest.raises(UsageError, match=r"annotation 5 of .*instances_train.json has category_id 2"):
        load_coco_folder(str(tmp_path / "unknown"))
    _write_coco(tmp_path / "short", "train", [image], [{**bad, "category_id": 1, "bbox": [0, 0, 2]}], CATEGORIES)
    with pytest.raises(UsageError, match=r"annotation 5 .* not 4 numbers"):
        load_coco_folder(str(tmp_path / "short"))
    _write_coco(tmp_path / "missing", "train", [image], [], CATEGORIES)
    (tmp_path / "missing" / "train" / "a.png").unlink()
    with pytest.raises(UsageError, match=r"a\.png, which does not exist"):
        load_coco_folder(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"no annotations/instances_<split>\.json"):
        load_coco_folder(str(tmp_path / "empty"))


# -- bad input -----------------------------------------------------------------------------------------------------


def _rows(objects_list, sizes=None, images=None) -> Dataset:
    count = len(objects_list)
    sizes = sizes or [(40, 30)] * count
    data = {
        "image_id": list(range(count)),
        "image": images or [PILImage.new("RGB", size) for size in sizes],
        "width": [w for w, _ in sizes],
        "height": [h for _, h in sizes],
        "objects": objects_list,
    }
    return Dataset.from_dict(data, features=detection_features(["a", "b", "c", "d", "e"]))


GOOD = {"id": [0], "area": [4.0], "bbox": [[1.0, 1.0, 2.0, 2.0]], "category": [1]}


@pytest.mark.parametrize(
    "bbox, category, message",
    [
        ([5.0, 5.0, 0.0, 4.0], 0, r"width 0\.0 and height 4\.0; both must be > 0"),
        ([5.0, 5.0, 4.0, -3.0], 0, r"width 4\.0 and height -3\.0; both must be > 0"),
        ([30.0, 5.0, 12.0, 4.0], 0, r"outside its 40x30 image by more than 1 pixel"),
        ([-2.0, 5.0, 4.0, 4.0], 0, r"outside its 40x30 image"),
        ([5.0, 5.0, 4.0, 4.0], 3, r"category 3, outside \[0, 2\]"),
    ],
)
def test_each_bad_box_is_named_with_split_row_object_and_fix(bbox, category, message):
    bad = {"id": [0, 1], "area": [1.0, 1.0], "bbox": [[1.0, 1.0, 2.0, 2.0], bbox], "category": [0, category]}
    with pytest.raises(UsageError, match=r"^eval: row 1: object 1 has .*" + message):
        check_detection_rows(_rows([GOOD, bad]), "image", "objects", 3, split="eval")


def test_a_box_within_one_pixel_of_the_border_passes():
    edge = {"id": [0], "area": [1.0], "bbox": [[-0.5, 0.0, 40.9, 30.5]], "category": [2]}
    check_detection_rows(_rows([GOOD, edge]), "image", "objects", 3)


def _plain(objects_list) -> Dataset:
    count = len(objects_list)
    image = PILImage.new("RGB", (8, 8))
    return Dataset.from_dict(
        {"image": [image] * count, "width": [8] * count, "height": [8] * count, "objects": objects_list}
    )


def test_malformed_objects_are_named():
    good = {"bbox": [[0, 0, 2, 2]], "category": [0]}
    short = {"bbox": [[0, 0, 2]], "category": [0]}
    with pytest.raises(UsageError, match=r"train: row 1: object 0 has bbox \[0, 0, 2\], not 4 numbers"):
        check_detection_rows(_plain([good, short]), "image", "objects", 3)
    uneven = {"bbox": [[0, 0, 2, 2], [1, 1, 2, 2]], "category": [0]}
    with pytest.raises(UsageError, match=r"train: row 2: its objects have 2 bboxes but 1 categories"):
        check_detection_rows(_plain([good, good, uneven]), "image", "objects", 3)
    with pytest.raises(UsageError, match=r"train: row 0: its objects are .*not a mapping of `bbox` and `category`"):
        check_detection_rows(_plain([{"boxes": [[0, 0, 2, 2]], "labels": [0]}]), "image", "objects", 3)
    listed = [[{"bbox": [0, 0, 2, 2], "category": 0}, {"bbox": [0, 0, 10, 2], "category": 1}]]  # a list of dicts
    with pytest.raises(UsageError, match=r"train: row 0: object 1 .* outside its 8x8 image"):
        check_detection_rows(_plain(listed), "image", "objects", 3)


def test_without_size_columns_the_file_is_named_and_its_header_read(tmp_path):
    paths = []
    for i, size in enumerate([(10, 10), (12, 6)]):
        PILImage.new("RGB", size).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    outside = {"id": [0], "area": [1.0], "bbox": [[4.0, 4.0, 6.0, 4.0]], "category": [0]}  # y + h = 8 > 6 + 1
    data = _rows([GOOD, outside], images=paths).remove_columns(["width", "height"])
    with pytest.raises(UsageError, match=r"train: row 1 \(.*1\.png\): object 0 .* outside its 12x6 image"):
        check_detection_rows(data, "image", "objects", 3)


def test_size_columns_spare_decoding_the_images(tmp_path):
    missing = str(tmp_path / "absent.png")  # never opened when width and height are columns
    data = _rows([GOOD], images=[missing])
    check_detection_rows(data, "image", "objects", 3)
    with pytest.raises(UsageError, match=r"row 0 \(.*absent\.png\): its image cannot be read"):
        check_detection_rows(data.remove_columns(["width", "height"]), "image", "objects", 3)


# -- transforms ----------------------------------------------------------------------------------------------------


def _painted(height, width, rects) -> PILImage.Image:
    """A black image with rectangle k ([x, y, w, h], integer pixels) filled in channel k only."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for channel, (x, y, w, h) in enumerate(rects):
        pixels[y : y + h, x : x + w, channel] = 255
    return PILImage.fromarray(pixels)


def _objects(rects):
    return {
        "id": list(range(len(rects))),
        "area": [float(w * h) for _, _, w, h in rects],
        "bbox": [[float(v) for v in rect] for rect in rects],
        "category": list(range(len(rects))),
    }


def _absolute_xyxy(target) -> torch.Tensor:
    """The normalised (cx, cy, w, h) boxes of a target as absolute (x1, y1, x2, y2), computed by hand."""
    height, width = target["size"].tolist()
    cx, cy, w, h = (target["boxes"] * torch.tensor([width, height, width, height])).unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _ink_extent(channel: torch.Tensor, threshold: float = 0.5):
    """(x1, y1, x2, y2) of the pixels of `channel` above `threshold` (pixel edges), or None."""
    ys, xs = torch.nonzero(channel > threshold, as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_boxes_stay_on_their_pixels_through_multi_scale_resize_and_flip():
    rects = [(10, 20, 30, 15), (70, 5, 20, 40)]
    rows = {
        "image": [_painted(60, 100, rects)] * 16,
        "objects": [_objects(rects)] * 16,
        "sample_index": list(range(16)),
    }
    transform = DetectionTransform(student=IDENTITY, num_labels=2, scales=(30, 45, 60), max_size=None)
    out = transform(rows)
    flipped = 0
    for pixels, target in zip(out["pixel_values"], out["labels"]):
        assert target["size"].tolist() == list(pixels.shape[-2:]) and target["orig_size"].tolist() == [60, 100]
        assert pixels.shape[-2] in (30, 45, 60) and pixels.shape[-1] == pixels.shape[-2] * 100 // 60
        assert target["class_labels"].tolist() == [0, 1]
        for box, label in zip(_absolute_xyxy(target), target["class_labels"]):
            # the box bounds the bright pixels of its own rectangle to within the blur of bilinear resizing
            torch.testing.assert_close(box, _ink_extent(pixels[label]), atol=1.0, rtol=0)
        flipped += bool(_absolute_xyxy(target)[0, 0] > pixels.shape[-1] / 2)  # the first rectangle is on the left
    assert 0 < flipped < 16  # both outcomes of the coin were drawn


def test_square_image_size_and_absolute_xyxy_boxes():
    rects = [(10, 20, 30, 15)]
    rows = {"image": [_painted(60, 100, rects)], "objects": [_objects(rects)]}
    out = DetectionTransform(student=IDENTITY, num_labels=1, image_size=50, box_format="xyxy", train=False)(rows)
    assert out["pixel_values"][0].shape == (3, 50, 50)
    torch.testing.assert_close(out["labels"][0]["boxes"], torch.tensor([[5.0, 50 / 3, 20.0, 87.5 / 3]]))


def test_normalised_cxcywh_matches_a_hand_computation():
    image = PILImage.new("RGB", (80, 40))
    rows = {"image": [image], "objects": [_objects([(8, 4, 16, 12)])], "image_id": [123]}
    out = DetectionTransform(student=IDENTITY, num_labels=1, scales=(20,), train=False)(rows)
    target = out["labels"][0]
    # resized 40x80 -> 20x40 (factor 1/2): xyxy [4, 2, 12, 8]; cx = 8/40, cy = 5/20, w = 8/40, h = 6/20
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.2, 0.25, 0.2, 0.3]]))
    assert target["boxes"].dtype == torch.float32 and target["class_labels"].dtype == torch.long
    assert target["image_id"].tolist() == [123] and target["orig_size"].tolist() == [40, 80]
    assert target["size"].tolist() == [20, 40] and out["pixel_values"][0].shape == (3, 20, 40)


def test_resized_shape_follows_detrs_shorter_side_and_max_size_rule():
    assert resized_shape(480, 640, 800, 1333) == (800, 1066)  # int(800 * 640 / 480)
    assert resized_shape(1000, 3000, 800, 1333) == (444, 1332)  # 3000/1000*800 > 1333: round(1333 / 3) = 444
    assert resized_shape(640, 480, 800, None) == (1066, 800)
    assert resized_shape(800, 1000, 800, 1333) == (800, 1000)


def test_boxes_pushed_off_by_a_crop_are_clipped_or_dropped():
    rects = [(2, 40, 20, 20), (45, 45, 20, 20)]
    count = 48
    rows = {"image": [_painted(100, 100, rects)] * count, "objects": [_objects(rects)] * count}
    rows["sample_index"] = list(range(count))
    transform = DetectionTransform(student=IDENTITY, num_labels=2, scales=(60,), crop=(30, 40), flip=False)
    out = transform(rows)
    dropped = clipped = 0
    for pixels, target in zip(out["pixel_values"], out["labels"]):
        boxes = _absolute_xyxy(target)
        height, width = pixels.shape[-2:]
        assert (boxes >= -1e-4).all() and (boxes[:, 0::2] <= width + 1e-4).all()
        assert (boxes[:, 1::2] <= height + 1e-4).all()
        for label in range(2):
            visible = _ink_extent(pixels[label])
            present = (target["class_labels"] == label).nonzero().flatten().tolist()
            if visible is None or (visible[2:] - visible[:2]).min() < 1:
                dropped += not present
                continue
            assert len(present) == 1, "a visible rectangle keeps its box"
            # a crop at 30-40 px of 100 scaled to 60 px makes pixels ~1.5-2 wide: the box bounds its pixels to that
            torch.testing.assert_close(boxes[present[0]], visible, atol=2.0, rtol=0)
            clipped += bool(((visible[:2] == 0) | (visible[2:] == torch.tensor([width, height]))).any())
    assert dropped > 0 and clipped > 0


def test_a_box_reaching_past_the_border_within_tolerance_is_clamped():
    rows = {"image": [PILImage.new("RGB", (20, 10))], "objects": [_objects([(-0.5, 2, 20.8, 8.6)])]}
    out = DetectionTransform(student=IDENTITY, num_labels=1, scales=(10,), box_format="xyxy", train=False)(rows)
    torch.testing.assert_close(out["labels"][0]["boxes"], torch.tensor([[0.0, 2.0, 20.0, 10.0]]))


@pytest.mark.parametrize("train", [True, False])
def test_images_without_boxes_survive(train):
    rows = {"image": [PILImage.new("RGB", (30, 20))], "objects": [_objects([])], "sample_index": [0]}
    out = DetectionTransform(student=IDENTITY, num_labels=3, scales=(16,), train=train)(rows)
    target = out["labels"][0]
    assert target["boxes"].shape == (0, 4) and target["class_labels"].shape == (0,)
    assert out["pixel_values"][0].shape == (3, 16, 24)


def test_transform_is_a_function_of_seed_epoch_and_index():
    rects = [(10, 20, 30, 15), (70, 5, 20, 40)]
    rows = {
        "image": [_painted(60, 100, rects)] * 12,
        "objects": [_objects(rects)] * 12,
        "sample_index": list(range(12)),
    }

    def run(seed=0, epoch=0):
        transform = DetectionTransform(student=IDENTITY, num_labels=2, scales=(30, 40, 50, 60), seed=seed)
        transform.set_epoch(epoch)
        return transform(rows)

    def same(a, b, i):
        return a["pixel_values"][i].shape == b["pixel_values"][i].shape and torch.equal(
            a["labels"][i]["boxes"], b["labels"][i]["boxes"]
        )

    first, again = run(), run()
    assert all(same(first, again, i) for i in range(12))
    assert all(torch.equal(first["pixel_values"][i], again["pixel_values"][i]) for i in range(12))
    draws = {
        (tuple(p.shape), tuple(t["boxes"].flatten().tolist())) for p, t in zip(first["pixel_values"], first["labels"])
    }
    assert len(draws) > 1  # other indices, other draws
    assert not all(same(first, run(epoch=1), i) for i in range(12))
    assert not all(same(first, run(seed=1), i) for i in range(12))
    single = run()
    one = DetectionTransform(student=IDENTITY, num_labels=2, scales=(30, 40, 50, 60), seed=0)(
        {key: values[5:6] for key, values in rows.items()}
    )
    assert torch.equal(one["pixel_values"][0], single["pixel_values"][5])  # the index, not the batch position


def test_teacher_of_other_statistics_gets_the_same_image_normalised_its_way():
    rects = [(10, 20, 30, 15)]
    rows = {"image": [_painted(60, 100, rects)], "objects": [_objects(rects)]}
    student = ImageConfig(mean=(0.5,) * 3, std=(0.25,) * 3)
    out = DetectionTransform(student=student, teachers=[IDENTITY, student], num_labels=1, scales=(30,))(rows)
    torch.testing.assert_close(out["pixel_values"][0] * 0.25 + 0.5, out["teacher_pixel_values"][0])
    assert "teacher_pixel_values_1" not in out  # the second teacher reads the student's pixels


def test_set_transform_on_the_dataset_yields_targets():
    rects = [(10, 20, 30, 15)]
    data = _rows([_objects(rects)], sizes=[(100, 60)], images=[_painted(60, 100, rects)])
    data.set_transform(DetectionTransform(student=IDENTITY, num_labels=3, scales=(30,), train=False))
    sample = data[0]
    assert sample["pixel_values"].shape == (3, 30, 50) and sample["labels"]["class_labels"].tolist() == [0]


# -- collator ------------------------------------------------------------------------------------------------------


def _example(height, width, count, index):
    boxes = torch.rand(count, 4, generator=torch.Generator().manual_seed(index))
    return {
        "pixel_values": torch.full((3, height, width), 1.0 + index),
        "teacher_pixel_values": torch.full((3, height, width), -1.0 - index),
        "labels": {
            "class_labels": torch.arange(count),
            "boxes": boxes,
            "image_id": torch.tensor([index]),
            "orig_size": torch.tensor([2 * height, 2 * width]),
            "size": torch.tensor([height, width]),
        },
        "sample_index": index,
    }


def test_collator_pads_images_marks_real_pixels_and_keeps_every_object():
    examples = [_example(4, 5, 0, 0), _example(6, 3, 1, 1), _example(2, 2, 3, 2)]
    originals = [e["labels"]["boxes"].clone() for e in examples]
    batch = DetectionCollator()(examples)
    assert batch["pixel_values"].shape == (3, 3, 6, 5) and batch["teacher_pixel_values"].shape == (3, 3, 6, 5)
    assert batch["pixel_mask"].shape == (3, 6, 5) and batch["pixel_mask"].sum((1, 2)).tolist() == [20, 18, 4]
    assert batch["sample_index"].tolist() == [0, 1, 2]
    for i, (example, target) in enumerate(zip(examples, batch["labels"])):
        height, width = example["pixel_values"].shape[-2:]
        real = batch["pixel_mask"][i].bool()
        assert real[:height, :width].all() and real.sum() == height * width
        assert batch["pixel_values"][i][:, real].eq(1.0 + i).all() and batch["pixel_values"][i][:, ~real].eq(0).all()
        assert batch["teacher_pixel_values"][i][:, real].eq(-1.0 - i).all()
        assert batch["teacher_pixel_values"][i][:, ~real].eq(0).all()
        assert torch.equal(target["class_labels"], example["labels"]["class_labels"])
        # transformers' DETR processors re-express normalised boxes in the padded canvas (cx and w by w / W, ...)
        scale = torch.tensor([width / 5, height / 6, width / 5, height / 6])
        torch.testing.assert_close(target["boxes"], originals[i] * scale)
        assert target["size"].tolist() == [6, 5] and target["orig_size"].tolist() == [2 * height, 2 * width]
        assert torch.equal(example["labels"]["boxes"], originals[i])  # the inputs are not modified
    assert [len(t["boxes"]) for t in batch["labels"]] == [0, 1, 3]


def test_collator_leaves_absolute_boxes_alone():
    examples = [_example(4, 5, 2, 0), _example(6, 3, 1, 1)]
    batch = DetectionCollator(box_format="xyxy")(examples)
    for example, target in zip(examples, batch["labels"]):
        assert torch.equal(target["boxes"], example["labels"]["boxes"])
        assert torch.equal(target["size"], example["labels"]["size"])


def test_transform_and_collator_together_on_mixed_images():
    rects = [(10, 20, 30, 15), (70, 5, 20, 40), (40, 40, 10, 10)]
    rows = {
        "image": [_painted(60, 100, rects), PILImage.new("RGB", (50, 80)), _painted(60, 100, rects[:1])],
        "objects": [_objects(rects), _objects([]), _objects(rects[:1])],
        "sample_index": [0, 1, 2],
    }
    out = DetectionTransform(student=IDENTITY, num_labels=3, scales=(40,), train=False)(rows)
    batch = DetectionCollator()([{key: out[key][i] for key in out} for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 64, 66)  # 40x66, 64x40 (shorter side 40), 40x66
    assert [len(t["class_labels"]) for t in batch["labels"]] == [3, 0, 1]
    for i in (0, 2):  # boxes in the padded canvas still bound the same pixels
        boxes = _absolute_xyxy(batch["labels"][i])
        for box, label in zip(boxes, batch["labels"][i]["class_labels"]):
            torch.testing.assert_close(box, _ink_extent(batch["pixel_values"][i][label]), atol=1.0, rtol=0)


def test_transform_and_collator_pickle_for_data_loader_workers():
    transform = pickle.loads(pickle.dumps(DetectionTransform(num_labels=1, scales=(20,), crop=(10, 20), seed=4)))
    rows = {"image": [_painted(40, 40, [(5, 5, 10, 10)])], "objects": [_objects([(5, 5, 10, 10)])]}
    assert transform(rows)["labels"][0]["class_labels"].tolist() == [0]
    assert isinstance(pickle.loads(pickle.dumps(DetectionCollator())), DetectionCollator)
