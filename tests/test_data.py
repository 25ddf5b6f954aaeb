"""Tests for hfkd.data / hfkd.demo_data: offline, on tmp_path data, checked against independent references."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from transformers import ConvNextImageProcessor, ViTImageProcessor

from hfkd.data.batch_transform import make_transform_fn, set_image_transform
from hfkd.data.collator import DistillationCollator, collate_fn
from hfkd.data.datasets import add_sample_index, check_labels, class_names, detect_columns, load_image_dataset
from hfkd.data.decode import filter_unreadable
from hfkd.data.demo import FASHION_MNIST_DIR, FASHION_MNIST_ENV, FASHION_MNIST_LABELS, load_demo_dataset, read_idx
from hfkd.data.transforms import (
    ImageConfig,
    build_transforms,
    image_config_for_model,
    image_config_from_processor,
    image_config_from_timm,
)

# --------------------------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An idx file written from the format spec: big-endian int32 magic, one int32 per dim, then uint8 data."""
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def gradient_image(width: int = 96, height: int = 80, mode: str = "RGB") -> PILImage.Image:
    """A smooth, left-right asymmetric image, so that resampling differences stay small and flips show."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 120, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).clip(0, 255).astype(np.uint8)
    return PILImage.fromarray(rgb).convert(mode)


def constant_dataset(n: int = 4, value: int = 191, mode: str = "RGB") -> Dataset:
    images = [PILImage.new(mode, (20 + i, 30), value if mode == "L" else (value,) * 3) for i in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)


# --------------------------------------------------------------------------------------------- idx / demo data


def test_read_idx_matches_struct_written_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "imgs-idx3-ubyte.gz", images, 2051)
    write_idx(tmp_path / "labels-idx1-ubyte", labels, 2049)
    np.testing.assert_array_equal(read_idx(tmp_path / "imgs-idx3-ubyte.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels-idx1-ubyte"), labels)

    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "labels-idx1-ubyte").read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loader_on_tiny_idx_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    expected = {}
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, 2049)  # mixed gz / raw on purpose
        expected["train" if prefix == "train" else "test"] = (images, labels)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))

    dataset, source = load_demo_dataset("fashion_mnist")
    assert source == f"Debian dataset-fashion-mnist ({tmp_path})"
    for split, (images, labels) in expected.items():
        assert dataset[split].features["label"].names == FASHION_MNIST_LABELS
        assert list(dataset[split]["label"]) == labels.tolist()
        for row, image in enumerate(dataset[split]["image"]):
            assert image.mode == "L" and image.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(image), images[row])


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason=f"{FASHION_MNIST_DIR} missing: apt-get install dataset-fashion-mnist"
)
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    dataset, source = load_demo_dataset("fashion-mnist")
    assert source == f"Debian dataset-fashion-mnist ({FASHION_MNIST_DIR})"
    assert (len(dataset["train"]), len(dataset["test"])) == (60000, 10000)
    assert dataset["train"].features["label"].names == FASHION_MNIST_LABELS
    image = dataset["train"][0]["image"]
    assert (image.mode, image.size) == ("L", (28, 28))
    assert dataset["train"][0]["label"] == FASHION_MNIST_LABELS.index("Ankle boot")  # the famous first image
    # Fashion-MNIST is balanced: 6000 train / 1000 test images per class.
    assert np.bincount(list(dataset["train"]["label"])).tolist() == [6000] * 10
    assert np.bincount(list(dataset["test"]["label"])).tolist() == [1000] * 10


def test_digits_fallback_when_no_files_and_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dataset, source = load_demo_dataset("fashion-mnist")
    assert source == "scikit-learn digits"
    assert "using scikit-learn digits instead" in caplog.text
    assert len(dataset["train"]) + len(dataset["test"]) == 1797
    assert dataset["train"].features["label"].names == [str(i) for i in range(10)]
    image = dataset["train"][0]["image"]
    assert (image.mode, image.size) == ("L", (8, 8))
    from sklearn.datasets import load_digits

    pixels = np.stack([np.asarray(im) for split in ("train", "test") for im in dataset[split]["image"]])
    assert pixels.max() == 255 and pixels.sum() == np.rint(load_digits().images * 255 / 16).sum()

    loaded = load_image_dataset("fashion-mnist", eval_fraction=0.1, seed=0)
    assert loaded.source == "scikit-learn digits"
    assert sorted(loaded) == ["eval", "train"] and len(loaded["eval"]) == 180


def test_digits_by_name_with_seeded_subsets():
    first = load_image_dataset("digits", max_train_samples=50, max_eval_samples=20, seed=3)
    second = load_image_dataset("digits", max_train_samples=50, max_eval_samples=20, seed=3)
    assert first.source == "scikit-learn digits"
    assert (len(first["train"]), len(first["eval"])) == (50, 20)
    assert list(first["train"]["label"]) == list(second["train"]["label"])
    assert len(set(first["eval"]["label"])) > 1  # a random subset, not the first rows
    with pytest.raises(ValueError, match="max_train_samples"):
        load_image_dataset("digits", max_train_samples=0)


# --------------------------------------------------------------------------------------------- folders / columns


def test_imagefolder_class_names_travel(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(["cat", "dog", "fish"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            mode = "L" if i == 0 else "RGB"
            PILImage.new(mode, (16 + i, 12), 40 * c + i).save(root / name / f"{i}.png")
    dataset = load_image_dataset(str(root), eval_fraction=0.25, seed=0, cache_dir=str(tmp_path / "cache"))
    assert dataset.source == f"imagefolder {root}"
    assert (len(dataset["train"]), len(dataset["eval"])) == (9, 3)
    image_column, label_column = detect_columns(dataset["train"])
    assert (image_column, label_column) == ("image", "label")
    assert class_names(dataset, label_column) == ["cat", "dog", "fish"]
    assert sorted(dataset["eval"]["label"]) == [0, 1, 2]  # stratified split-off
    check_labels(dataset, label_column, num_labels=3)
    with pytest.raises(ValueError, match="no split 'holdout'.*--eval_split"):
        load_image_dataset(str(root), eval_split="holdout", cache_dir=str(tmp_path / "cache"))


def test_detect_columns_errors_name_columns_and_flag():
    labels = {"fine_label": ClassLabel(names=["x"]), "coarse_label": ClassLabel(names=["y"])}
    features = Features({"pic": Image(), **labels})
    dataset = Dataset.from_dict({"pic": [None], "fine_label": [0], "coarse_label": [0]}, features=features)
    assert detect_columns(dataset) == ("pic", "fine_label")  # two ClassLabels: the usual name wins

    plain = Dataset.from_dict({"a": [b""], "b": [0], "target": [1], "label": [0]})
    with pytest.raises(ValueError, match=r"columns are: a .*b .*target .*label.*--image_column"):
        detect_columns(plain)
    with pytest.raises(ValueError, match=r"single obvious label column.*target.*--label_column"):
        detect_columns(plain, image_column="a")
    with pytest.raises(ValueError, match=r"no column 'photo'.*pic \(Image\).*--image_column"):
        detect_columns(dataset, image_column="photo")
    with pytest.raises(ValueError, match=r"no column 'y'.*--label_column"):
        detect_columns(dataset, label_column="y")


def test_class_names_without_classlabel_sort_numerically():
    dataset = Dataset.from_dict({"label": [10, 2, 0, 2]})
    assert class_names(dataset, "label") == ["0", "2", "10"]


def test_check_labels_names_value_index_and_range():
    dataset = Dataset.from_dict({"label": [0, 1, 2, 7, 1]})
    check_labels(dataset, "label", num_labels=8)
    with pytest.raises(ValueError, match=r"label 7 at index 3 .*outside \[0, 2\].*num_labels=3.*at least 8"):
        check_labels(dataset, "label", num_labels=3)
    shuffled = dataset.select([4, 3, 0])  # the index is the row the user sees, not the storage row
    with pytest.raises(ValueError, match="at index 1 "):
        check_labels(shuffled, "label", num_labels=3)
    with pytest.raises(ValueError, match=r"label -1 .*unlabelled.*--eval_split"):
        check_labels(Dataset.from_dict({"label": [0, -1]}), "label", num_labels=2)
    with pytest.raises(ValueError, match="class_encode_column"):
        check_labels(Dataset.from_dict({"label": ["a", "b"]}), "label", num_labels=2)


def test_string_labels_become_one_classlabel_for_both_splits(tmp_path):
    features = Features({"image": Image(), "label": Value("string")})
    images = [PILImage.new("RGB", (4, 4))] * 6
    dataset = Dataset.from_dict({"image": images, "label": ["b", "a", "c", "b", "a", "c"]}, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_dataset(str(tmp_path / "saved"), eval_fraction=0.5, seed=0)
    for split in ("train", "eval"):
        assert loaded[split].features["label"].names == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------- transforms


def test_vit_processor_config_and_exact_normalisation():
    processor = ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.2, 0.4, 0.6], image_std=[0.5, 0.25, 0.1]
    )
    config = image_config_from_processor(processor)
    assert config.size == (32, 32) and config.eval_resize_size == (32, 32) and config.interpolation == "bilinear"
    image = PILImage.new("RGB", (70, 50), (191, 64, 10))
    pixel_values = build_transforms(config, train=False)(image)
    assert pixel_values.shape == (3, 32, 32) and pixel_values.dtype == torch.float32
    expected = [(191 / 255 - 0.2) / 0.5, (64 / 255 - 0.4) / 0.25, (10 / 255 - 0.6) / 0.1]
    torch.testing.assert_close(pixel_values.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)
    assert pixel_values.std(dim=(1, 2)).max() < 1e-5
    assert build_transforms(config, train=True)(image).shape == (3, 32, 32)


@pytest.mark.parametrize(
    "processor, size",
    [
        (ViTImageProcessor(size={"height": 96, "width": 96}), (96, 96)),
        (ConvNextImageProcessor(size={"shortest_edge": 80}, crop_pct=0.875), (80, 80)),
        (ConvNextImageProcessor(size={"shortest_edge": 384}), (384, 384)),  # ConvNeXt warps from 384 on
    ],
)
def test_eval_transform_matches_the_processor(processor, size):
    config = image_config_from_processor(processor)
    assert config.size == size
    image = gradient_image(150, 100)
    ours = build_transforms(config, train=False)(image)
    reference = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.01  # PIL vs tensor resampling: rounding only (a wrong crop: > 0.03)


def test_convnext_tiny_config_and_plain_resize_path():
    config = image_config_from_processor(ConvNextImageProcessor(size={"shortest_edge": 40}, crop_pct=0.875))
    assert config.size == (40, 40) and config.eval_resize_size == 45 and config.interpolation == "bicubic"
    transform = build_transforms(config, train=False)
    assert [type(t).__name__ for t in transform.geometry.transforms] == ["Resize", "ToImage"]  # <= 64 px: no crop
    assert build_transforms(config, train=True).train_augment == "crop_flip"
    assert build_transforms(config, train=True, train_augment="rrc").train_augment == "rrc"
    with pytest.raises(ValueError, match="train_augment"):
        build_transforms(config, train=True, train_augment="mixup")


def test_timm_configs():
    timm = pytest.importorskip("timm")
    from transformers import TimmWrapperConfig, TimmWrapperImageProcessor

    cfg = {"input_size": (3, 96, 96), "crop_pct": 0.9, "interpolation": "bicubic", "mean": (0.5,) * 3}
    cfg["std"] = (0.25, 0.5, 0.5)
    config = image_config_from_timm(cfg)
    assert config.size == (96, 96) and config.eval_resize_size == 106 and config.interpolation == "bicubic"
    assert image_config_from_timm(TimmWrapperConfig(architecture="resnet18", pretrained_cfg=cfg)) == config
    processor = TimmWrapperImageProcessor(pretrained_cfg=cfg)
    assert image_config_from_processor(processor) == config
    image = gradient_image(150, 100)
    ours = build_transforms(config, train=False)(image)
    assert (ours - processor.val_transforms(image)).abs().mean() < 1e-4
    model_config = image_config_from_timm(timm.create_model("resnet18", pretrained=False, num_classes=3))
    assert model_config.size == (224, 224) and model_config.crop_pct == 0.95
    with pytest.raises(ValueError, match="pretrained_cfg"):
        image_config_from_timm(object())


def test_image_config_for_model_follows_the_model_config():
    timm = pytest.importorskip("timm")
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(
        ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_channels=1)
    )  # fmt: skip
    config = image_config_for_model(vit, ViTImageProcessor())  # a 224 px processor for a 32 px, 1-channel model
    assert (config.size, config.num_channels, config.mean) == ((32, 32), 1, (0.5,))
    vit(pixel_values=build_transforms(config, train=False)(gradient_image())[None])  # the model accepts it

    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    config = image_config_for_model(resnet, ConvNextImageProcessor(size={"shortest_edge": 224}))
    assert (config.size, config.eval_resize_size) == ((224, 224), 256)
    assert image_config_for_model(resnet).size == (224, 224)  # no processor: ImageNet defaults
    timm_config = image_config_for_model(timm.create_model("resnet18", pretrained=False, num_classes=3))
    assert timm_config.crop_pct == 0.95 and timm_config.interpolation == "bicubic"


def test_grayscale_becomes_three_channels_and_one_channel_models_stay_gray():
    gray = PILImage.new("L", (28, 28), 128)
    rgb_config = ImageConfig(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    pixel_values = build_transforms(rgb_config, train=False)(gray)
    assert pixel_values.shape == (3, 32, 32)
    torch.testing.assert_close(pixel_values[0], pixel_values[2])
    gray_config = ImageConfig(size=(28, 28), mean=(0.2, 0.4, 0.6), std=(0.5,) * 3, num_channels=1)
    assert gray_config.mean == pytest.approx((0.4,))
    pixel_values = build_transforms(gray_config, train=False)(gradient_image(28, 28))
    assert pixel_values.shape == (1, 28, 28)
    with pytest.raises(ValueError, match="num_channels"):
        ImageConfig(size=32, mean=(0.1, 0.2), num_channels=3)


# --------------------------------------------------------------------------------------------- transform fn / collator


def test_teacher_pixel_values_only_when_configs_differ():
    student = ImageConfig(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    batch = {"image": [gradient_image(), gradient_image(40, 40)], "label": [0, 1]}

    same = make_transform_fn(build_transforms(student, False), build_transforms(student, False), "image", "label")
    out = same(batch)
    assert sorted(out) == ["labels", "pixel_values"] and out["labels"] == [0, 1]

    renormed = ImageConfig(size=(32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    fn = make_transform_fn(build_transforms(student, True), build_transforms(renormed, True), "image", "label")
    out = fn(batch)
    assert fn.modes == ["renorm"]
    raw = out["pixel_values"][0] * 0.5 + 0.5  # same random view, only the normalisation differs
    expected = (raw - torch.tensor(renormed.mean)[:, None, None]) / torch.tensor(renormed.std)[:, None, None]
    torch.testing.assert_close(out["teacher_pixel_values"][0], expected, atol=1e-5, rtol=0)

    bigger = ImageConfig(size=(96, 96), mean=(0.5,) * 3, std=(0.5,) * 3)
    fn = make_transform_fn(
        build_transforms(student, True, train_augment="rrc"), build_transforms(bigger, True, train_augment="rrc"),
        "image", "label",
    )  # fmt: skip
    for seed in range(5):  # replayed random draws: same crop box and flip at the teacher's resolution
        torch.manual_seed(seed)
        out = fn({"image": [gradient_image(150, 100)], "label": [0]})
        teacher = torch.nn.functional.interpolate(out["teacher_pixel_values"][0][None], size=(32, 32), mode="area")[0]
        assert out["teacher_pixel_values"][0].shape == (3, 96, 96)
        assert (teacher - out["pixel_values"][0]).abs().mean() < 0.01  # independent draws: > 0.1


def test_unreadable_image_names_index_and_skip_counts():
    dataset = constant_dataset(4)
    corrupt = {"bytes": b"definitely not a png", "path": "broken.png"}
    dataset = Dataset.from_dict(
        {"image": [*dataset["image"][:2], corrupt, dataset["image"][3]], "label": list(dataset["label"])},
        features=dataset.features,
    )
    config = ImageConfig(size=(16, 16))
    indexed = set_image_transform(add_sample_index(dataset), make_transform_fn(build_transforms(config, False)))
    assert indexed[1]["pixel_values"].shape == (3, 16, 16) and indexed[1]["sample_index"] == 1
    with pytest.raises(ValueError, match=r"dataset index 2 \(file broken.png\).*filter_unreadable"):
        indexed[2]
    with pytest.raises(ValueError, match=r"row 0 of the batch.*add_sample_index"):
        set_image_transform(dataset, make_transform_fn(build_transforms(config, False)))[2]

    fn = make_transform_fn(build_transforms(config, False), skip_unreadable=True)
    skipping = set_image_transform(add_sample_index(dataset), fn)
    examples = skipping.__getitems__([0, 1, 2, 3])
    assert fn.num_skipped == 1 and [e["sample_index"] for e in examples] == [0, 1, 3]

    kept, n_skipped = filter_unreadable(dataset, "image")
    assert n_skipped == 1 and len(kept) == 3 and kept.features == dataset.features


def test_collator_and_dataloader_end_to_end():
    dataset = add_sample_index(constant_dataset(5, mode="L"))
    student = build_transforms(ImageConfig(size=(24, 24)), train=True)
    teacher = build_transforms(ImageConfig(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3), train=True)
    fn = make_transform_fn(student, teacher, "image", "label")
    assert pickle.loads(pickle.dumps(fn)).modes == ["replay"]  # dataloader workers get a copy
    dataset = set_image_transform(dataset, fn)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fn)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 24, 24)
    assert batch["teacher_pixel_values"].shape == (4, 3, 32, 32)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 0, 1]
    assert batch["sample_index"].tolist() == [0, 1, 2, 3]

    with pytest.raises(ValueError, match="Empty batch"):
        DistillationCollator()([])
    with pytest.raises(ValueError, match="shapes"):
        collate_fn([{"pixel_values": torch.zeros(3, 4, 4)}, {"pixel_values": torch.zeros(3, 5, 5)}])


def test_short_dataset_names_load_their_hub_ids(monkeypatch):
    from datasets import Dataset, DatasetDict

    import hfkd.data.datasets as image_datasets

    seen = []

    def fake_load_dataset(name, config=None, **kwargs):
        seen.append(name)
        rows = {"image": [np.zeros((4, 4, 3), dtype=np.uint8)] * 4, "label": [0, 1, 0, 1]}
        return DatasetDict({"train": Dataset.from_dict(rows), "validation": Dataset.from_dict(rows)})

    monkeypatch.setattr(image_datasets, "load_dataset", fake_load_dataset)
    image_datasets.load_image_dataset("imagenet-1k")
    image_datasets.load_image_dataset("CIFAR100")
    image_datasets.load_image_dataset("someone/my-data")
    assert seen == ["ILSVRC/imagenet-1k", "uoft-cs/cifar100", "someone/my-data"]


def test_augmentation_is_a_function_of_seed_epoch_and_index_whatever_the_workers():
    """Each row's crop, flip and RandAugment come from (seed, epoch, index): the global RNG, the order rows are read
    in and the number of dataloader workers change nothing; the epoch and the seed change the draws."""
    images = [gradient_image(40 + 3 * i, 36) for i in range(6)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    raw = add_sample_index(Dataset.from_dict({"image": images, "label": [i % 2 for i in range(6)]}, features=features))
    student = build_transforms(ImageConfig(size=(24, 24)), train=True, train_augment="rrc")
    teacher = build_transforms(ImageConfig(size=(32, 32)), train=True, train_augment="rrc")
    strong = (build_transforms(ImageConfig(size=(24, 24)), train=True, train_augment="rrc", strong=True), None)

    def batches(seed: int, epoch: int, workers: int, order: list[int]) -> dict[str, torch.Tensor]:
        fn = make_transform_fn(student, teacher, "image", "label", strong_transforms=strong, seed=seed)
        fn.set_epoch(epoch)
        dataset = set_image_transform(raw, fn)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, order), batch_size=2, num_workers=workers, collate_fn=collate_fn
        )
        out = [batch for batch in loader]
        return {key: torch.cat([b[key] for b in out])[torch.argsort(torch.tensor(order))] for key in out[0]}

    torch.manual_seed(123)
    reference = batches(seed=7, epoch=1, workers=0, order=list(range(6)))
    torch.manual_seed(456)  # another global RNG state, rows in another order, two worker processes
    again = batches(seed=7, epoch=1, workers=2, order=[5, 3, 1, 0, 2, 4])
    for key in ("pixel_values", "teacher_pixel_values", "strong_pixel_values"):
        torch.testing.assert_close(again[key], reference[key], rtol=0, atol=0)
    assert not torch.equal(batches(seed=7, epoch=2, workers=0, order=list(range(6)))["pixel_values"],
                           reference["pixel_values"])  # fmt: skip
    assert not torch.equal(batches(seed=8, epoch=1, workers=0, order=list(range(6)))["pixel_values"],
                           reference["pixel_values"])  # fmt: skip
    # The strong view draws its own crop: it is not the weak view's crop with RandAugment on top.
    assert not torch.equal(reference["strong_pixel_values"], reference["pixel_values"])
