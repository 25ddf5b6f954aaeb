#!/usr/bin/env python
"""What a step costs when the data come the Hugging Face guide's way, side by side with tensors and with timm.

    python benchmarks/datasets_path.py [--json runs/bench/datasets_path.json]

ResNet-34 -> ResNet-18 (timm architectures, random init, 10 classes), KD, batch 32 at 64 px, one dataloader
process. Each variant is one training step including fetching its batch from the dataloader; the median over
`--rounds` interleaved rounds of `--steps` steps:

- `timm_task`: timm's own `LogitDistillationTask` loop on a batch of tensors in memory;
- `hfkd_tensors`: DistillationTrainer on a torch dataset of tensors in memory;
- `hfkd_guide_lists`: DistillationTrainer on the guide's dataset (`dataset.map` adds `pixel_values`, the PIL `image`
  kept) batched from its nested lists, as before hfkd cast them (a plain collate function turns the cast off);
- `hfkd_guide`: the same dataset with the trainer's default collator, which casts the tensor column to a fixed-shape
  `Array3D` and batches only the columns a step reads.

Printed ratios are against `hfkd_tensors`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timm_pair(num_classes: int = 10):
    import timm

    torch.manual_seed(0)
    student = timm.create_model("resnet18", num_classes=num_classes)
    return student, timm.create_model("resnet34", num_classes=num_classes)


def wrapped(model, architecture: str, num_classes: int = 10):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    wrapper = TimmWrapperForImageClassification(TimmWrapperConfig(architecture=architecture, num_labels=num_classes))
    wrapper.timm_model.load_state_dict(model.state_dict())
    return wrapper


def guide_dataset(count: int, size: int):
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    raw = Dataset.from_dict({"image": images, "label": [i % 10 for i in range(count)]}, features=features)

    def process(batch):  # what the guide's `process` does with an image processor: normalised CHW arrays
        arrays = [np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0 for image in batch["image"]]
        return {"pixel_values": [a.tolist() for a in arrays]}

    return raw.map(process, batched=True, desc="guide-style map")


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def plain_collate(examples):
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
        "labels": torch.tensor([int(e["label"]) for e in examples]),
    }


def trainer_stepper(dataset, collator, args_ns, workdir: str):
    from hfkd import DistillationArguments, DistillationTrainer

    student, teacher = timm_pair()
    args = DistillationArguments(
        output_dir=workdir, report_to="none", use_cpu=True, distill_loss="kd", optim="sgd", learning_rate=0.01,
        per_device_train_batch_size=args_ns.batch_size, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, max_steps=10_000,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=wrapped(student, "resnet18"), teacher_model=wrapped(teacher, "resnet34"), args=args,
        train_dataset=dataset, data_collator=collator,
    )  # fmt: skip
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    loader = trainer.get_train_dataloader()
    iterator = iter(loader)

    def step() -> None:
        nonlocal iterator
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return step


def timm_stepper(pixels: torch.Tensor, labels: torch.Tensor, batch_size: int):
    from timm.task import LogitDistillationTask

    student, teacher = timm_pair()
    task = LogitDistillationTask(student, teacher, temperature=4.0, verbose=False)
    optimizer = torch.optim.SGD(task.trainable_module.parameters(), lr=0.01)
    position = [0]

    def step() -> None:
        start = position[0] % (len(labels) - batch_size)
        position[0] += batch_size
        out = task(pixels[start : start + batch_size], labels[start : start + batch_size])
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--json", default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", default="runs/bench/datasets_path")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hfkd.data.collator import DistillationCollator

    guide = guide_dataset(args.images, args.image_size)
    pixels = torch.tensor(np.asarray(guide.with_format("numpy")["pixel_values"]), dtype=torch.float32)
    labels = torch.tensor(guide["label"])
    steppers = {
        "timm_task": timm_stepper(pixels, labels, args.batch_size),
        "hfkd_tensors": trainer_stepper(TensorDataset(pixels, labels), None, args, f"{args.workdir}/t"),
        "hfkd_guide_lists": trainer_stepper(guide, plain_collate, args, f"{args.workdir}/l"),
        "hfkd_guide": trainer_stepper(guide, DistillationCollator(), args, f"{args.workdir}/g"),
    }
    for step in steppers.values():  # warm-up
        step()
    times = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    results = {
        "seconds_per_step": median,
        "ratio_to_hfkd_tensors": {name: value / median["hfkd_tensors"] for name, value in median.items()},
        "setting": {"pair": "timm resnet34 -> resnet18, KD", "device": f"CPU ({os.cpu_count()} cores)",
                    **{k: getattr(args, k) for k in ("images", "image_size", "batch_size", "steps", "rounds")}},
    }  # fmt: skip
    print(f"\n{results['setting']['pair']}, batch {args.batch_size}, {args.image_size} px, one dataloader process")
    print(f"{'variant':<20} {'ms/step':>9} {'÷ hfkd_tensors':>15}")
    for name, value in median.items():
        print(f"{name:<20} {1000 * value:>9.1f} {results['ratio_to_hfkd_tensors'][name]:>15.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
