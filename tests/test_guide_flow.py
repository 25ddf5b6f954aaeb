"""The Hugging Face distillation guide's way of preparing data works as written, and costs what tensors cost: a
`dataset.map` that adds `pixel_values` and keeps the PIL `image`, then `DistillationTrainer` with no collator, with
`remove_unused_columns` either way; and the script with `--remove_unused_columns true`."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Array3D, ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.data.collator import DistillationCollator, fast_tensor_columns

from .testing_utils import tiny_resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402


def guide_dataset(n: int = 12) -> Dataset:
    """As the guide builds it: images and labels, then `map` adds the processor's `pixel_values` (nested lists)."""
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(5)])})
    raw = Dataset.from_dict({"image": images, "label": [i % 5 for i in range(n)]}, features=features)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})

    def process(batch):
        batch["pixel_values"] = processor(batch["image"], return_tensors="np")["pixel_values"].tolist()
        return batch

    return raw.map(process, batched=True)


@pytest.mark.parametrize("remove_unused_columns", [False, True])
def test_the_guides_dataset_trains_with_the_default_collator(tmp_path, remove_unused_columns):
    data = guide_dataset()
    student = tiny_resnet(seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=4, max_steps=2,
        save_strategy="no", remove_unused_columns=remove_unused_columns, learning_rate=0.05, optim="sgd",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=tiny_resnet(wide=True, seed=2), args=args, train_dataset=data, eval_dataset=data
    )
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert 0.0 <= trainer.evaluate()["eval_accuracy"] <= 1.0


def test_fast_columns_give_the_same_batches_and_skip_the_images():
    data = guide_dataset()
    fast = fast_tensor_columns(data)
    assert isinstance(fast.features["pixel_values"], Array3D) and fast.format["columns"] == ["pixel_values", "label"]
    collate = DistillationCollator()
    slow = collate([data[i] for i in range(6)])
    quick = collate(fast.__getitems__(list(range(6))))
    assert set(quick) == {"pixel_values", "labels"}
    torch.testing.assert_close(quick["pixel_values"], slow["pixel_values"], rtol=0, atol=0)
    assert torch.equal(quick["labels"], slow["labels"])
    transformed = data.with_transform(lambda batch: batch)  # a batch transform decides for itself
    assert fast_tensor_columns(transformed) is transformed


def test_the_script_runs_with_remove_unused_columns(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for split in ("train", "validation"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                PILImage.fromarray(pixels).save(root / split / name / f"{i}.png")
    student = tmp_path / "student"
    tiny_resnet(2, seed=1).save_pretrained(student)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(student)
    metrics = run_image_distill.main([
        "--student", str(student), "--loss", "ce", "--train_dir", str(root / "train"), "--validation_dir",
        str(root / "validation"), "--remove_unused_columns", "true", "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no",
    ])  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
