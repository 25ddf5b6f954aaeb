"""Object detection data: the layout of transformers' `run_object_detection.py` (an image column and an `objects`
column of `bbox` lists, COCO `[x, y, width, height]` in pixels, with one `category` each, as cppe-5), COCO folders
turned into it, the checks a split passes before training, the batch transform and the collator.

Targets follow the DETR family in transformers: per image a dict of `class_labels` (n,), `boxes` (n, 4) as
normalised `(cx, cy, w, h)`, `image_id`, `orig_size` and `size` (height, width). Like transformers' DETR image
processors, the collator pads the images at the bottom and right, returns `pixel_mask` (1 = real pixel) and
re-expresses the normalised boxes (and `size`) in the padded canvas. `box_format="xyxy"` gives torchvision detectors
absolute `(x1, y1, x2, y2)` boxes instead, which padding leaves as they are.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hfkd.data.batch import LABELS, PIXEL_MASK, PIXEL_VALUES, SAMPLE_INDEX, TEACHER_PIXEL_VALUES, member_key
from hfkd.data.batch_transform import transform_rows
from hfkd.data.datasets import IMAGE_COLUMN_NAMES
from hfkd.data.decode import decode_image
from hfkd.data.transforms import ImageConfig, sample_seed
from hfkd.tasks.segmentation.transforms import image_tensor, normalize
from hfkd.utils.errors import UsageError

OBJECTS_COLUMN_NAMES = ("objects", "annotations")

"""The collator's mask of real (1) and padded (0) pixels, as transformers' DETR image processors return it."""

BOX_FORMATS = ("cxcywh", "xyxy")

OUTSIDE_TOLERANCE = 1.0
"""How far (pixels) a box may reach past the image border before the checks refuse it; the transform clamps it."""


def detection_features(names: Sequence[str]) -> Features:
    """The features of the layout: `image_id`, `image`, `width`, `height` and `objects` {id, area, bbox, category}."""
    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": {
                "id": List(Value("int64")),
                "area": List(Value("float32")),
                "bbox": List(List(Value("float32"), length=4)),
                "category": List(ClassLabel(names=list(names))),
            },
        }
    )


def detect_detection_columns(
    column_names: Iterable[str] | Dataset | DatasetDict,
    image_column: str | None = None,
    objects_column: str | None = None,
) -> tuple[str, str]:
    """`(image_column, objects_column)` of a dataset (or its column names): the objects one named `objects` or
    `annotations` (or `objects_column`, `--label_column`), the image one of hfkd's image column names (or
    `image_column`, `--image_column`)."""
    if isinstance(column_names, DatasetDict):
        column_names = column_names["train" if "train" in column_names else next(iter(column_names))]
    names = list(column_names.column_names if isinstance(column_names, Dataset) else column_names)
    listed = ", ".join(names) or "none"
    if objects_column is None:
        found = [name for name in OBJECTS_COLUMN_NAMES if name in names]
        if not found:
            raise UsageError(
                f"The dataset has no objects column ({' or '.join(OBJECTS_COLUMN_NAMES)}: per image a `bbox` list, "
                f"COCO [x, y, width, height] in pixels, and a `category` list); its columns are: {listed}. Set "
                "--label_column to the column of objects."
            )
        objects_column = found[0]
    elif objects_column not in names:
        raise UsageError(
            f"The dataset has no column {objects_column!r}; its columns are: {listed}. Fix --label_column."
        )
    if image_column is None:
        found = [name for name in IMAGE_COLUMN_NAMES if name in names and name != objects_column]
        if not found:
            raise UsageError(
                f"The dataset has no image column ({', '.join(IMAGE_COLUMN_NAMES)}); its columns are: {listed}. Set "
                "--image_column."
            )
        image_column = found[0]
    elif image_column not in names:
        raise UsageError(f"The dataset has no column {image_column!r}; its columns are: {listed}. Fix --image_column.")
    return image_column, objects_column


def load_coco_folder(folder: str) -> DatasetDict:
    """A COCO folder as the `objects` layout, one split per `annotations/instances_<split>.json` (COCO 2017:
    `train2017`, `val2017`) with its images under `<split>/` or `images/<split>/`.

    COCO's category ids (1..90 with gaps) become 0..K-1 in the order of their ids; the returned `DatasetDict` carries
    `id2label` ({0: "person", ...}) and `category_ids` (contiguous id -> the JSON's id, to write results back in COCO
    ids), and its `category` features are `ClassLabel`s of those names. Images without annotations are kept (with no
    objects); crowd annotations (`iscrowd: 1`), which DETR's training drops too, are left out.
    """
    files = sorted(glob.glob(os.path.join(folder, "annotations", "instances_*.json")))
    if not files:
        raise UsageError(
            f"{folder!r} has no annotations/instances_<split>.json: a COCO folder holds "
            "annotations/instances_train2017.json with its images in train2017/ or images/train2017/."
        )
    splits, names, ids = {}, None, None
    for path in files:
        split = os.path.basename(path)[len("instances_") : -len(".json")]
        try:
            with open(path, encoding="utf-8") as handle:
                coco = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{path} cannot be read as JSON ({err}); fix or remove that file.") from None
        split_names, split_ids = _coco_categories(coco, path)
        if names is not None and (split_names, split_ids) != (names, ids):
            raise UsageError(
                f"{path} lists other categories than {files[0]}: every split of a COCO folder must share one "
                "`categories` list."
            )
        names, ids = split_names, split_ids
        contiguous = {cid: i for i, cid in enumerate(ids)}
        splits[split] = _coco_split(coco, path, _coco_image_dir(folder, split), contiguous, detection_features(names))
    data = DatasetDict(splits)
    data.id2label, data.category_ids = dict(enumerate(names)), dict(enumerate(ids))
    return data


def _coco_categories(coco: Mapping[str, Any], path: str) -> tuple[list[str], list[int]]:
    categories = coco.get("categories") if isinstance(coco, Mapping) else None
    if not categories or not all(isinstance(c, Mapping) and "id" in c and "name" in c for c in categories):
        raise UsageError(f"{path} has no `categories` list of {{'id', 'name'}} entries; COCO annotation files do.")
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    names, ids = [str(c["name"]) for c in ordered], [int(c["id"]) for c in ordered]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise UsageError(f"{path} repeats a category id or name in `categories`; each must appear once.")
    return names, ids


def _coco_image_dir(folder: str, split: str) -> str:
    for candidate in (os.path.join(folder, split), os.path.join(folder, "images", split)):
        if os.path.isdir(candidate):
            return candidate
    raise UsageError(
        f"{folder!r} has annotations/instances_{split}.json but no image folder {split}/ or images/{split}/: put the "
        f"split's images there."
    )


def _coco_split(
    coco: Mapping[str, Any], path: str, image_dir: str, contiguous: dict[int, int], features: Features
) -> Dataset:
    images = coco.get("images") or []
    rows = {
        int(info["id"]): {
            "image_id": int(info["id"]),
            "image": os.path.join(image_dir, info["file_name"]),
            "width": int(info["width"]),
            "height": int(info["height"]),
            "objects": {"id": [], "area": [], "bbox": [], "category": []},
        }
        for info in images
    }
    for annotation in coco.get("annotations") or []:
        name = f"annotation {annotation.get('id')} of {path}"
        row = rows.get(annotation.get("image_id"))
        if row is None:
            raise UsageError(f"{name} names image_id {annotation.get('image_id')}, which `images` does not list.")
        if annotation.get("category_id") not in contiguous:
            raise UsageError(
                f"{name} has category_id {annotation.get('category_id')}, which `categories` does not list "
                f"({sorted(contiguous)}); add the category or drop the annotation."
            )
        bbox = annotation.get("bbox")
        if not _is_box(bbox):
            raise UsageError(f"{name} has bbox {bbox!r}, not 4 numbers [x, y, width, height]; fix or drop it.")
        if annotation.get("iscrowd"):
            continue
        objects = row["objects"]
        objects["id"].append(int(annotation.get("id", len(objects["id"]))))
        objects["area"].append(float(annotation.get("area", bbox[2] * bbox[3])))
        objects["bbox"].append([float(v) for v in bbox])
        objects["category"].append(contiguous[annotation["category_id"]])
    for row in rows.values():
        if not os.path.isfile(row["image"]):
            raise UsageError(
                f"{path} lists image {row['image_id']} at {row['image']}, which does not exist: copy the split's "
                "images there (file_name is read relative to the split's image folder)."
            )
    return Dataset.from_dict({c: [row[c] for row in rows.values()] for c in features}, features=features)


def _is_box(bbox: Any) -> bool:
    if not isinstance(bbox, (list, tuple, np.ndarray, torch.Tensor)) or len(bbox) != 4:
        return False
    try:
        return all(math.isfinite(float(v)) for v in bbox)
    except (TypeError, ValueError):
        return False


def _where(row: Mapping[str, Any], image_column: str, index: int) -> str:
    value = row.get(image_column)
    path = value.get("path") if isinstance(value, dict) else getattr(value, "filename", None)
    return f"row {index}" + (f" ({path})" if path else "")


def check_objects(objects: Any, size: tuple[int, int], num_labels: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (n, 4) COCO xywh float32, categories (n,) int64) of one row's objects, or a `UsageError` that names
    `where` ("train: row 3 (path)"), the object and the fix. `size` is the image's (width, height)."""
    if isinstance(objects, Sequence) and not isinstance(objects, str):  # a list of {bbox, category} dicts
        if not all(isinstance(o, Mapping) for o in objects):
            objects = None
        else:
            objects = {"bbox": [o.get("bbox") for o in objects], "category": [o.get("category") for o in objects]}
    if not isinstance(objects, Mapping) or "bbox" not in objects or "category" not in objects:
        raise UsageError(
            f"{where}: its objects are {str(objects)[:80]!r}, not a mapping of `bbox` and `category` lists (the "
            "layout of transformers' run_object_detection.py); fix the row or --label_column."
        )
    bboxes, categories = list(objects["bbox"]), list(objects["category"])
    if len(bboxes) != len(categories):
        raise UsageError(
            f"{where}: its objects have {len(bboxes)} bboxes but {len(categories)} categories; each box needs one "
            "category: fix the row's objects."
        )
    width, height = size
    for number, (bbox, category) in enumerate(zip(bboxes, categories)):
        if not _is_box(bbox):
            raise UsageError(
                f"{where}: object {number} has bbox {bbox!r}, not 4 numbers [x, y, width, height]; fix or drop it."
            )
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise UsageError(
                f"{where}: object {number} has bbox {[x, y, w, h]} of width {w} and height {h}; both must be > 0 "
                "(COCO [x, y, width, height]: if these are [x1, y1, x2, y2] corners, convert them; else drop the box)."
            )
        tol = OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            raise UsageError(
                f"{where}: object {number} has bbox {[x, y, w, h]}, which reaches outside its {width}x{height} image "
                f"by more than {tol:g} pixel: boxes are [x, y, width, height] in pixels (normalised boxes need "
                "multiplying by the image size); clip or drop the box."
            )
        if isinstance(category, bool) or not isinstance(category, (int, np.integer)) or not 0 <= category < num_labels:
            raise UsageError(
                f"{where}: object {number} has category {category!r}, outside [0, {num_labels - 1}]: give the model "
                "as many labels as the dataset's classes (--id2label) or map the category ids to 0..num_labels-1 "
                "(load_coco_folder maps COCO's ids)."
            )
    boxes = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    return boxes, np.asarray(categories, dtype=np.int64).reshape(-1)


def _image_size(value: Any) -> tuple[int, int]:
    """(width, height) of an image value, reading only the file's header."""
    if isinstance(value, PILImage.Image):
        return value.size
    if isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        with PILImage.open(source) as image:
            return image.size
    array = np.asarray(value)
    return int(array.shape[1]), int(array.shape[0])


def check_detection_rows(
    dataset: Dataset,
    image_column: str,
    objects_column: str,
    num_labels: int,
    *,
    split: str = "train",
    width_column: str = "width",
    height_column: str = "height",
    batch_size: int = 1000,
) -> None:
    """Before training: every row's objects are checked (`check_objects`) against its image's size, and the first
    bad one is named (split, row, file) with the fix. Sizes come from the `width`/`height` columns when the dataset
    has them, else from each image file's header (no pixel is decoded)."""
    if len(dataset) == 0:
        raise UsageError(f"The {split} split has no rows.")
    sized = width_column in dataset.column_names and height_column in dataset.column_names
    columns = [image_column, objects_column] + ([width_column, height_column] if sized else [])
    part = dataset.select_columns(columns)
    if isinstance(part.features.get(image_column), Image):
        part = part.cast_column(image_column, Image(decode=False))
    for start, batch in zip(range(0, len(part), batch_size), part.iter(batch_size=batch_size)):
        for offset in range(len(batch[objects_column])):
            row = {key: values[offset] for key, values in batch.items()}
            where = f"{split}: {_where(row, image_column, start + offset)}"
            if sized:
                size = (int(row[width_column]), int(row[height_column]))
            else:
                try:
                    size = _image_size(row[image_column])
                except Exception as err:  # any reader error: the row cannot be used
                    raise UsageError(f"{where}: its image cannot be read ({err}); fix or drop that row.") from None
            check_objects(row[objects_column], size, num_labels, where)


def _labels(inputs: Mapping[str, Any]) -> Any:
    return inputs["labels"]


def resized_shape(height: int, width: int, shorter: int, max_size: int | None = None) -> tuple[int, int]:
    """(height, width) with the shorter side `shorter`, lowered so that the longer side stays within `max_size`
    (DETR's `get_size_with_aspect_ratio`: 800 and 1333)."""
    if max_size is not None:
        small, large = float(min(height, width)), float(max(height, width))
        if large / small * shorter > max_size:
            shorter = int(round(max_size * small / large))
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


class DetectionTransform:
    """The batch transform of detection rows (`dataset.set_transform`): each image with its boxes resized (and, in
    training, flipped) together with torchvision v2, the student's pixels, each teacher's own normalisation of the
    same image, `labels` (see the module doc) and `sample_index`.

    Training: with `crop`, half the images first get a random crop of sides in `crop` = (min, max) (DETR's
    `RandomSizeCrop`); then the shorter side is resized to a random choice of `scales` with the longer side at most
    `max_size` (or, with `image_size`, the image to `image_size` x `image_size`); a horizontal flip with probability
    1/2; then boxes are clamped to the image and the ones left under one pixel wide or high dropped (an image may end
    with none). Evaluation resizes to the largest scale (or `image_size`) only. Every draw comes from (seed, epoch,
    index) (`hfkd.data.transforms.sample_seed`), so a resumed run sees the same images.

    Args:
        image_column, objects_column (`str`): the dataset's columns.
        student (`ImageConfig`): the student's normalisation (mean, std, channels); its size is not used.
        teachers (`Sequence[ImageConfig]`): a teacher whose mean/std differ from the student's gets
            `teacher_pixel_values[_i]` of the same image.
        num_labels (`int`): the classes; a category outside them stops with the row named.
        train (`bool`, defaults to `True`): random geometry (training) or the deterministic resize (evaluation).
        scales (`Sequence[int]`, defaults to `(800,)`): shorter sides to draw from (mdistiller: 640..800 by 32).
        max_size (`int`, *optional*, defaults to `1333`): bound of the longer side; `None` leaves it free.
        image_size (`int`, *optional*): resize every image to this square instead (ignores `scales`).
        flip (`bool`, defaults to `True`), crop (`tuple[int, int]`, *optional*): training augmentations.
        box_format (`str`, defaults to `"cxcywh"`): `"cxcywh"` normalised (DETR family) or `"xyxy"` absolute.
        seed (`int`): with the epoch and the row's index, the seed of its random draws.
        unlabelled (`Collection[int]`, *optional*): training rows (by `sample_index`) whose boxes are not used
            (`--labelled_samples`): their `labels` hold no box and `"unlabelled": True`, and the trainer gives them the
            teacher's detections as targets (`DetectionTask.teacher_labels`).
    """

    def __init__(
        self,
        image_column: str = "image",
        objects_column: str = "objects",
        student: ImageConfig | None = None,
        teachers: Sequence[ImageConfig] = (),
        *,
        num_labels: int,
        train: bool = True,
        scales: Sequence[int] = (800,),
        max_size: int | None = 1333,
        image_size: int | None = None,
        flip: bool = True,
        crop: tuple[int, int] | None = None,
        box_format: str = "cxcywh",
        seed: int = 42,
        unlabelled: Collection[int] = (),
    ) -> None:
        if box_format not in BOX_FORMATS:
            raise UsageError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}.")
        if not scales or min(scales) < 1 or (image_size is not None and image_size < 1):
            raise UsageError(f"Image sizes must be positive: scales {tuple(scales)}, image_size {image_size}.")
        if crop is not None and not 1 <= crop[0] <= crop[1]:
            raise UsageError(f"crop must be (min, max) sides with 1 <= min <= max (DETR: 384 600), got {crop}.")
        student = student or ImageConfig()
        self.image_column, self.objects_column, self.student = image_column, objects_column, student
        self.num_labels, self.train, self.scales, self.max_size = num_labels, train, tuple(scales), max_size
        self.image_size, self.flip, self.crop, self.box_format = image_size, flip, crop, box_format
        self.seed, self.epoch = seed, 0
        self.unlabelled = frozenset(unlabelled) if train else frozenset()
        self.teachers = {
            member: config
            for member, config in enumerate(teachers)
            if (config.mean, config.std, config.num_channels) != (student.mean, student.std, student.num_channels)
        }
        self._sanitize = v2.SanitizeBoundingBoxes(labels_getter=_labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _size(self, height: int, width: int, rng: random.Random | None) -> tuple[int, int]:
        if self.image_size is not None:
            return self.image_size, self.image_size
        shorter = rng.choice(self.scales) if rng is not None else max(self.scales)
        return resized_shape(height, width, shorter, self.max_size)

    def _geometry(
        self, pixels: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, classes: torch.Tensor, index: int
    ) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes, torch.Tensor]:
        rng = random.Random(sample_seed(self.seed, self.epoch, index)) if self.train else None
        if rng is not None and self.crop is not None and rng.random() < 0.5:
            height, width = pixels.shape[-2:]
            crop_h = rng.randint(min(self.crop[0], height), min(self.crop[1], height))
            crop_w = rng.randint(min(self.crop[0], width), min(self.crop[1], width))
            top, left = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
            pixels, boxes = TF.crop(pixels, top, left, crop_h, crop_w), TF.crop(boxes, top, left, crop_h, crop_w)
        size = list(self._size(*pixels.shape[-2:], rng))
        pixels = TF.resize(pixels, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        boxes = TF.resize(boxes, size)
        if rng is not None and self.flip and rng.random() < 0.5:
            pixels, boxes = TF.horizontal_flip(pixels), TF.horizontal_flip(boxes)
        boxes = TF.clamp_bounding_boxes(boxes)
        if rng is not None:
            kept = self._sanitize({"boxes": boxes, "labels": classes})
            boxes, classes = kept["boxes"], kept["labels"]
        return pixels.as_subclass(torch.Tensor), boxes, classes

    def _one(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        where = f"{'train' if self.train else 'eval'}: {_where(row, self.image_column, index)}"
        try:
            image = decode_image(row[self.image_column])
            image.load()
        except Exception as err:  # any decoder error: the row cannot be used
            raise UsageError(f"{where}: its image cannot be read ({err}); fix or drop that row.") from None
        xywh, categories = check_objects(row[self.objects_column], image.size, self.num_labels, where)
        height, width = image.height, image.width
        boxes = tv_tensors.BoundingBoxes(
            torch.from_numpy(xywh), format=tv_tensors.BoundingBoxFormat.XYWH, canvas_size=(height, width)
        )
        boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        pixels = image_tensor(image, self.student.num_channels)
        pixels, boxes, classes = self._geometry(pixels, boxes, torch.from_numpy(categories), index)
        new_h, new_w = pixels.shape[-2:]
        if self.box_format == "cxcywh":
            boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
            boxes = boxes.as_subclass(torch.Tensor) / torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32)
        target = {
            "class_labels": classes.to(torch.long),
            "boxes": boxes.as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4),
            "image_id": torch.tensor([int(row.get("image_id", index))], dtype=torch.long),
            "orig_size": torch.tensor([height, width], dtype=torch.long),
            "size": torch.tensor([new_h, new_w], dtype=torch.long),
        }
        if index in self.unlabelled:  # its boxes are not used: the teacher's detections will be its targets
            target.update(class_labels=target["class_labels"][:0], boxes=target["boxes"][:0], unlabelled=True)
        out = {PIXEL_VALUES: normalize(pixels, self.student.mean, self.student.std), LABELS: target}
        for member, config in self.teachers.items():
            teacher = pixels if config.num_channels == self.student.num_channels else pixels[:1].expand(3, -1, -1)
            out[member_key(TEACHER_PIXEL_VALUES, member)] = normalize(teacher, config.mean, config.std)
        return out

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return transform_rows(batch, self._one, self.image_column)


class DetectionCollator:
    """Batch detection samples: images of different sizes padded with 0 (the mean colour after normalisation) at the
    bottom and right to the batch's largest height and width, `pixel_mask` (1 = real pixel), and `labels` kept as a
    list of per-image dicts, so that no object is lost whatever each image holds (none included).

    With normalised boxes (`box_format="cxcywh"`) each image's boxes and `size` are re-expressed in the padded canvas,
    as transformers' DETR image processors do when they pad (`update_bboxes`); absolute `"xyxy"` boxes are unchanged.
    """

    def __init__(self, box_format: str = "cxcywh") -> None:
        if box_format not in BOX_FORMATS:
            raise UsageError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}.")
        self.box_format = box_format

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise UsageError("Empty batch.")
        batch: dict[str, Any] = {}
        for key in examples[0]:
            if key == SAMPLE_INDEX:
                batch[key] = torch.tensor([int(e[key]) for e in examples], dtype=torch.long)
            elif key.startswith(PIXEL_VALUES) or key.startswith(TEACHER_PIXEL_VALUES):
                batch[key] = _pad_stack([torch.as_tensor(e[key]) for e in examples])
        height, width = batch[PIXEL_VALUES].shape[-2:]
        mask = torch.zeros((len(examples), height, width), dtype=torch.long)
        for i, example in enumerate(examples):
            mask[i, : example[PIXEL_VALUES].shape[-2], : example[PIXEL_VALUES].shape[-1]] = 1
        batch[PIXEL_MASK] = mask
        if LABELS in examples[0]:
            batch[LABELS] = [self._target(e[LABELS], height, width) for e in examples]
        return batch

    def _target(self, target: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
        target = dict(target)
        if self.box_format == "cxcywh":
            real_h, real_w = (int(v) for v in target["size"])
            scale = torch.tensor([real_w / width, real_h / height] * 2, dtype=torch.float32)
            target["boxes"] = torch.as_tensor(target["boxes"], dtype=torch.float32) * scale
            target["unpadded_size"] = torch.tensor([real_h, real_w], dtype=torch.long)  # evaluation scales back by it
            target["size"] = torch.tensor([height, width], dtype=torch.long)
        return target


def _pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    height, width = max(t.shape[-2] for t in tensors), max(t.shape[-1] for t in tensors)
    return torch.stack(
        [torch.nn.functional.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=0.0) for t in tensors]
    )
