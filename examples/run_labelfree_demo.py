#!/usr/bin/env python
"""The label-free demo: a small backbone distilled from a bigger one on unlabelled images, offline, on a CPU.

    python examples/run_labelfree_demo.py --output_dir runs/labelfree_demo

No foundation model downloads offline, so the teacher is a backbone trained here: the classification demo's teacher
CNN (`examples/run_demo.py`: a transformers ResNet 64-128-256, 2.8 M parameters) trained with labels on
Fashion-MNIST's training set (Debian's dataset-fashion-mnist; scikit-learn's digits without it), then saved without
its classifier head as a `ResNetModel`. The student, a ResNet 16-32-64 (0.08 M parameters) from a fixed random init,
learns from that teacher on the training images with their labels removed (the folder written here has no label
column), through the same command line as `hfkd distill --task image-feature-extraction`: with `embed` (its pooled
features through a trainable projection against the teacher's, cosine), `dense` (its last feature map through a
1 x 1 conv against the teacher's, cosine per position) and both. Progress is a k-NN accuracy (DINO's weighted k-NN)
of each backbone's pooled features on Fashion-MNIST's labelled test split: the random-init student's, each
distilled student's and the teacher's. The output folder gets `labelfree_demo_results.json`, `.md`, a chart and one
model card per student.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, load_from_disk
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel, ViTImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_image_distill  # noqa: E402

from hfkd.data.demo import load_demo_dataset  # noqa: E402
from hfkd.tasks.features.knn import knn_top1  # noqa: E402

# Fashion-MNIST's pixel statistics (single channel); the models read 1-channel 28x28 images (as examples/run_demo.py).
MEAN, STD = [0.286], [0.353]
TEACHER = {"embedding_size": 32, "hidden_sizes": [64, 128, 256], "depths": [2, 2, 2]}
STUDENT = {"embedding_size": 16, "hidden_sizes": [16, 32, 64], "depths": [1, 1, 1]}
METHODS = {
    "embed": ["--loss", "embed"],
    "dense": ["--loss", "dense"],
    "embed+dense": ["--loss", "embed", "--feature_loss", "dense"],
}
"""The distilled students (`--methods`), each loss at its defaults (cosine distance, weight 1)."""
LABELS = {
    "pixels": "raw pixels (no model)",
    "random": "student, random init (no training)",
    "teacher": "teacher (trained with labels)",
}


def resnet_folder(folder: Path, arch: dict, seed: int, *, head: bool, num_labels: int = 10) -> str:
    """A random-init ResNet saved like a Hub checkpoint (config, safetensors, image processor)."""
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        config = ResNetConfig(num_channels=1, num_labels=num_labels, layer_type="basic",
                              downsample_in_first_stage=False, **arch)  # fmt: skip
        (ResNetForImageClassification if head else ResNetModel)(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return str(folder)


def write_data(args: argparse.Namespace, folder: Path) -> tuple[str, str]:
    """Two `save_to_disk` folders, both evaluating on the first `eval_images` of the labelled test split: the
    teacher's (the labelled training split) and the students' (`train_images` training images without the label
    column); returns the data's source and the students' folder."""
    data, source = load_demo_dataset(args.dataset)
    labelled, unlabelled = folder / "labelled", folder / "unlabelled"
    stamp = {key: getattr(args, key) for key in ("dataset", "train_images", "eval_images")}
    stamp_file = folder / "stamp.json"
    if not stamp_file.exists() or json.loads(stamp_file.read_text()) != stamp:
        test = data["test"].select(range(min(args.eval_images, len(data["test"]))))
        DatasetDict({"train": data["train"], "test": test}).save_to_disk(str(labelled))
        train = data["train"].shuffle(seed=0).select(range(min(args.train_images, len(data["train"]))))
        DatasetDict({"train": train.remove_columns("label"), "test": test}).save_to_disk(str(unlabelled))
        stamp_file.write_text(json.dumps(stamp))
    return source, str(unlabelled)


def common_flags() -> list[str]:
    return [
        "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "50",
        "--per_device_eval_batch_size", "512", "--dataloader_num_workers", "0", "--overwrite_output_dir",
        "--optim", "adamw_torch", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05", "--weight_decay", "5e-4",
        "--train_augment", "crop_flip",
    ]  # fmt: skip


def train_teacher(args: argparse.Namespace, data: str, init: str) -> str:
    """The classification demo's teacher, trained with labels (or reused), then saved without its head: the
    backbone the students learn from. Returns the backbone's folder."""
    folder, backbone = Path(args.output_dir) / "teacher", Path(args.output_dir) / "teacher-backbone"
    stamp = {"arch": TEACHER, "epochs": args.teacher_epochs, "dataset": args.dataset}
    stamp_file = folder / "demo_teacher.json"
    if (
        (backbone / "model.safetensors").exists()
        and stamp_file.exists()
        and json.loads(stamp_file.read_text()) == stamp
    ):
        print(f"Reusing the teacher in {folder} (delete it to retrain).")
        return str(backbone)
    run_image_distill.main([
        "--student", init, "--loss", "ce", "--dataset", data, "--output_dir", str(folder),
        "--num_train_epochs", str(args.teacher_epochs), "--learning_rate", "2e-3", "--per_device_train_batch_size",
        "128", "--seed", "0", *common_flags(),
    ])  # fmt: skip
    ResNetModel.from_pretrained(folder).save_pretrained(backbone)  # the classifier's head is left behind
    ViTImageProcessor.from_pretrained(folder).save_pretrained(backbone)
    stamp_file.write_text(json.dumps(stamp))
    return str(backbone)


def train_student(args: argparse.Namespace, data: str, init: str, teacher: str, method: str) -> dict:
    """One student, from the same random init each time, on the unlabelled images; its first evaluation (before any
    step) gives the random-init row."""
    folder = Path(args.output_dir) / "students" / method.replace("+", "-")
    argv = [
        "--task", "image-feature-extraction", "--student", init, "--teacher", teacher, *METHODS[method],
        "--dataset", data, "--output_dir", str(folder), "--num_train_epochs", str(args.student_epochs),
        "--learning_rate", "5e-3", "--per_device_train_batch_size", "128", "--seed", "0", "--eval_on_start", "true",
        *common_flags(),
    ]  # fmt: skip
    run_image_distill.main(argv)
    metrics = json.loads((folder / "all_results.json").read_text())
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    first = next(entry for entry in history if "eval_knn_top1" in entry)
    return {**metrics, "initial_knn_top1": first["eval_knn_top1"]}


def pixel_knn(folder: str) -> float:
    """The same k-NN on the evaluation images' raw pixels, normalised as the models read them: what features must
    beat."""
    test = load_from_disk(folder)["test"]
    images = np.stack([np.asarray(image, dtype=np.float32).reshape(-1) for image in test["image"]])
    return knn_top1((images / 255.0 - MEAN[0]) / STD[0], np.asarray(test["label"]))


def summarise(records: dict[str, dict], output_dir: Path) -> str:
    """The results table (`labelfree_demo_results.md`) and chart (`.png`); returns the table."""
    rows = ["| model | k-NN top-1 (%) |", "|:--|--:|"]
    for name, top1 in records.items():
        rows.append(f"| {LABELS.get(name, f'student, {name}')} | {100 * top1:.2f} |")
    table = "\n".join(rows)
    (output_dir / "labelfree_demo_results.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = {k: 100 * v for k, v in records.items() if k not in ("teacher", "pixels")}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(list(students), list(students.values()), color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in students.values()], label_type="center", color="white")
    teacher = 100 * records["teacher"]
    ax.axhline(teacher, color="#c44e52", linestyle="--", label=f"teacher {teacher:.2f}")
    ax.set_ylim(0, 100)  # from 0: bar heights compare honestly
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title("Student backbone without labels: random init vs distilled")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(output_dir / "labelfree_demo_results.png", dpi=120)
    plt.close(fig)
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", default="runs/labelfree_demo")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--teacher_epochs", type=float, default=1.5, help="the teacher's epochs on labels")
    parser.add_argument("--train_images", type=int, default=40000, help="unlabelled images the students see")
    parser.add_argument("--eval_images", type=int, default=5000, help="labelled test images k-NN scores")
    parser.add_argument("--student_epochs", type=float, default=2, help="epochs over the unlabelled images")
    parser.add_argument("--student_widths", type=int, nargs="+", default=STUDENT["hidden_sizes"],
                        help="channels of the student's ResNet stages (one basic block each)")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start, phases = time.time(), []
    source, unlabelled = write_data(args, output_dir / "data")
    teacher_init = resnet_folder(output_dir / "init" / "teacher", TEACHER, seed=0, head=True)
    widths = args.student_widths
    arch = {"embedding_size": widths[0], "hidden_sizes": widths, "depths": [1] * len(widths)}
    student_init = resnet_folder(
        output_dir / "init" / f"student-{'-'.join(map(str, widths))}", arch, seed=1, head=False
    )
    clock = time.time()
    teacher = train_teacher(args, str(output_dir / "data" / "labelled"), teacher_init)
    phases.append(("teacher", time.time() - clock))
    runs = {}
    for method in args.methods:
        clock = time.time()
        runs[method] = train_student(args, unlabelled, student_init, teacher, method)
        phases.append((f"student {method}", time.time() - clock))
    first = runs[args.methods[0]]
    records = {"pixels": pixel_knn(unlabelled), "random": first["initial_knn_top1"]}
    records.update({m: r["eval_knn_top1"] for m, r in runs.items()}, teacher=first["teacher_eval_knn_top1"])
    (output_dir / "labelfree_demo_results.json").write_text(
        json.dumps({"k-NN top-1": records, "runs": runs}, indent=2)
    )
    table = summarise(records, output_dir)
    print(
        f"\nData: {source}; the students see {args.train_images} training images without labels, "
        f"{args.student_epochs:g} epochs; k-NN (k 20, T 0.07, leave-one-out) on the labelled test split."
    )
    print(table)
    print("\nTimes: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases)
          + f"; {(time.time() - start) / 60:.1f} min in all.")  # fmt: skip
    return records


if __name__ == "__main__":
    main()
