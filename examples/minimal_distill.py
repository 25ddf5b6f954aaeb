"""The smallest complete hfkd run, from plain Python: distil a small CNN into a smaller one on scikit-learn's digits.

    python examples/minimal_distill.py --output_dir runs/minimal

Everything is local and random-init, so it runs offline in well under a minute on a CPU.
"""

import argparse

import numpy as np
import torch
from datasets import Dataset
from sklearn.datasets import load_digits
from transformers import ResNetConfig, ResNetForImageClassification

from hfkd import DistillationArguments, DistillationTrainer


def digits_splits(seed: int = 0) -> tuple[Dataset, Dataset]:
    digits = load_digits()
    images = np.repeat(digits.images[:, None].astype("float32") / 16.0 - 0.5, 3, axis=1)  # (N, 3, 8, 8)
    order = np.random.default_rng(seed).permutation(len(images))
    ds = Dataset.from_dict({"pixel_values": images[order], "labels": digits.target[order].tolist()}).with_format(
        "torch"
    )
    return ds.select(range(1400)), ds.select(range(1400, len(ds)))


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples]),
    }


def small_resnet(widths: list[int], seed: int) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        embedding_size=widths[0],
        hidden_sizes=widths,
        depths=[1] * len(widths),
        num_labels=10,
        downsample_in_first_stage=False,
    )
    return ResNetForImageClassification(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="runs/minimal")
    parser.add_argument("--loss", default="dist")
    cli = parser.parse_args(argv)
    train_ds, val_ds = digits_splits()
    common = dict(
        report_to="none",
        use_cpu=True,
        per_device_train_batch_size=64,
        learning_rate=3e-3,
        save_strategy="no",
        logging_steps=10,
        seed=0,
    )

    teacher = small_resnet([32, 64], seed=0)
    teacher_args = DistillationArguments(
        output_dir=f"{cli.output_dir}/teacher", distill_loss="ce", num_train_epochs=3, **common
    )
    DistillationTrainer(
        model=teacher, args=teacher_args, train_dataset=train_ds, eval_dataset=val_ds, data_collator=collate
    ).train()

    student = small_resnet([8, 16], seed=1)
    args = DistillationArguments(
        output_dir=f"{cli.output_dir}/student", distill_loss=cli.loss, num_train_epochs=2, **common
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collate,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    print({k: round(v, 4) for k, v in metrics.items() if "accuracy" in k})
    return metrics


if __name__ == "__main__":
    main()
