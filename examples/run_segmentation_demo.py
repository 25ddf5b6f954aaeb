#!/usr/bin/env python
"""The segmentation demo: what distillation buys a small segmentation model on real images, offline, on a CPU.

    python examples/run_segmentation_demo.py --output_dir runs/segmentation_demo

No segmentation data set installs offline, so the scenes are composed of real images: one to three Fashion-MNIST
items (Debian's dataset-fashion-mnist; scikit-learn's digits without it) pasted at random places and scales on a
64 x 64 canvas, each pixel labelled with the class of the item on top of it, else background (11 classes; 3,000
training and 500 evaluation scenes, `hfkd.tasks.segmentation.demo`). They go through the same pipeline as
`hfkd distill`: a SegFormer teacher is trained with the per-pixel cross-entropy first (or reused from the output
folder), then a smaller SegFormer student is trained for fewer steps with the cross-entropy alone and with DIST, CWD
and KD per pixel, with the same crops. The output folder gets `segmentation_demo_results.json`, `.md`, a chart
(`segmentation_demo_results.png`), a picture of predictions (`segmentation_demo_predictions.png`: image, truth,
teacher, CE student, distilled student) and one model card per student.

Loss settings: DIST as its Cityscapes code (no temperature, β = γ = 1, weight 1); CWD as the authors' script
(τ = 4, weight 3); KD per pixel at τ = 1 (DIST's `CriterionKD` convention).
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
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_image_distill  # noqa: E402

from hfkd.tasks.segmentation.demo import DEMO_NAME, load_demo_scenes  # noqa: E402

METHODS = {
    "ce": [],
    "dist": [],
    "cwd": ["--distill_loss_kwargs", '{"temperature": 4.0, "loss_weight": 3.0}'],
    "kd": ["--distill_loss_kwargs", '{"temperature": 1.0}'],
}
# The scenes' pixel statistics (a grey canvas with faint noise and bright items), per RGB channel.
MEAN, STD = [0.09] * 3, [0.21] * 3
TEACHER = {
    "hidden_sizes": [32, 64, 128, 256],
    "depths": [2, 2, 2, 2],
    "num_attention_heads": [1, 2, 4, 8],
    "decoder_hidden_size": 128,
}
STUDENT = {
    "hidden_sizes": [8, 16, 32, 64],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 2, 2],
    "decoder_hidden_size": 32,
}
PALETTE = np.array(
    [
        [20, 20, 20],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ],
    np.uint8,
)


def make_init_folder(folder: Path, arch: dict, names: list[str], seed: int) -> str:
    """A random-init SegFormer saved like a Hub checkpoint (config, safetensors, image processor)."""
    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        config = SegformerConfig(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            sr_ratios=[8, 4, 2, 1],
            **arch,
        )
        SegformerForSemanticSegmentation(config).save_pretrained(folder)
        processor = SegformerImageProcessor(size={"height": 64, "width": 64}, image_mean=MEAN, image_std=STD)
        processor.save_pretrained(folder)
    return str(folder)


def common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--dataset",
        args.data,
        "--use_cpu",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "50",
        "--per_device_train_batch_size",
        "32",
        "--per_device_eval_batch_size",
        "100",
        "--crop_size",
        "64",
        "64",
        "--scale_range",
        "0.75",
        "1.5",
        "--optim",
        "adamw_torch",
        "--lr_scheduler_type",
        "cosine",
        "--warmup_steps",
        "0.05",
        "--weight_decay",
        "1e-4",
        "--dataloader_num_workers",
        "0",
        "--overwrite_output_dir",
    ]


def train_teacher(args: argparse.Namespace, init: str) -> tuple[str, dict]:
    folder = Path(args.output_dir) / "teacher"
    results, stamp_file = folder / "eval_results.json", folder / "demo_teacher.json"
    stamp = {"arch": TEACHER, "steps": args.teacher_steps, "seed": args.data_seed}
    if results.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        print(f"Reusing the teacher in {folder} (delete it to retrain).")
        return str(folder), json.loads(results.read_text())
    metrics = run_image_distill.main(
        [
            "--student",
            init,
            "--loss",
            "ce",
            "--output_dir",
            str(folder),
            "--max_steps",
            str(args.teacher_steps),
            "--learning_rate",
            "3e-3",
            "--seed",
            "0",
            *common_flags(args),
        ]
    )
    stamp_file.write_text(json.dumps(stamp))
    return str(folder), metrics


def train_student(args: argparse.Namespace, init: str, teacher: str, method: str) -> dict:
    folder = Path(args.output_dir) / "students" / method
    flags = ["--loss", "ce"] if method == "ce" else ["--teacher", teacher, "--loss", method, *METHODS[method]]
    baseline = Path(args.output_dir) / "students" / "ce" / "eval_results.json"
    if method != "ce" and baseline.exists():
        flags += ["--baseline_metrics", str(baseline)]
    return run_image_distill.main(
        [
            "--student",
            init,
            *flags,
            "--output_dir",
            str(folder),
            "--max_steps",
            str(args.student_steps),
            "--learning_rate",
            "3e-3",
            "--seed",
            "0",
            *common_flags(args),
        ]
    )


def summarise(records: dict[str, dict], output_dir: Path) -> str:
    rows = ["| model | mIoU (%) | pixel accuracy (%) | mean accuracy (%) |", "|:--|--:|--:|--:|"]
    for name, metrics in records.items():
        prefix = "teacher_eval_" if name == "teacher" and "teacher_eval_mean_iou" in metrics else "eval_"
        label = "teacher (longer training)" if name == "teacher" else f"student, {name.upper()}"
        rows.append(
            f"| {label} | {100 * metrics[prefix + 'mean_iou']:.2f} | "
            f"{100 * metrics[prefix + 'overall_accuracy']:.2f} | {100 * metrics[prefix + 'mean_accuracy']:.2f} |"
        )
    table = "\n".join(rows)
    (output_dir / "segmentation_demo_results.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = {k: 100 * v["eval_mean_iou"] for k, v in records.items() if k != "teacher"}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar([k.upper() for k in students], list(students.values()), color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in students.values()], label_type="center", color="white")
    teacher = 100 * records["teacher"]["eval_mean_iou"]
    ax.axhline(teacher, color="#c44e52", linestyle="--", label=f"teacher {teacher:.2f}")
    ax.set_ylim(0, 100)  # from 0: bar heights compare honestly; the values are printed
    ax.set_ylabel("mean IoU (%)")
    ax.set_title("Segmentation student: CE alone vs distillation")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(output_dir / "segmentation_demo_results.png", dpi=120)
    plt.close(fig)
    return table


@torch.no_grad()
def picture(output_dir: Path, folders: dict[str, str], seed: int, count: int = 5) -> None:
    """Evaluation scenes with their truth and each model's prediction, colour per class."""
    import matplotlib.pyplot as plt

    scenes = load_demo_scenes(train_scenes=1, eval_scenes=count, seed=seed)[0]["validation"]
    processor = SegformerImageProcessor.from_pretrained(folders["teacher"])
    models = {name: SegformerForSemanticSegmentation.from_pretrained(f).eval() for name, f in folders.items()}
    fig, axes = plt.subplots(count, 2 + len(models), figsize=(2 * (2 + len(models)), 2 * count))
    for row, scene in enumerate(scenes):
        pixels = processor(images=scene["image"], return_tensors="pt")["pixel_values"]
        panels = {"image": np.asarray(scene["image"]), "truth": PALETTE[np.asarray(scene["label"])]}
        for name, model in models.items():
            logits = torch.nn.functional.interpolate(
                model(pixel_values=pixels).logits, size=(64, 64), mode="bilinear", align_corners=False
            )
            panels[name] = PALETTE[logits.argmax(1)[0].numpy()]
        for col, (name, panel) in enumerate(panels.items()):
            axes[row, col].imshow(panel)
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(output_dir / "segmentation_demo_predictions.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", default="runs/segmentation_demo")
    parser.add_argument("--teacher_steps", type=int, default=1200, help="teacher optimiser steps (batch 32)")
    parser.add_argument("--student_steps", type=int, default=300, help="each student's optimiser steps (batch 32)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the composed scenes")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start, phases = time.time(), []
    scenes, names, source = load_demo_scenes(seed=args.data_seed)
    args.data = str(output_dir / "scenes")
    scenes.save_to_disk(args.data)
    (output_dir / "scenes" / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    teacher_init = make_init_folder(output_dir / "init" / "teacher", TEACHER, names, seed=0)
    student_init = make_init_folder(output_dir / "init" / "student", STUDENT, names, seed=1)
    clock = time.time()
    teacher, teacher_metrics = train_teacher(args, teacher_init)
    phases.append(("teacher", time.time() - clock))
    records = {"teacher": teacher_metrics}
    for method in METHODS:
        clock = time.time()
        records[method] = train_student(args, student_init, teacher, method)
        phases.append((f"student {method}", time.time() - clock))
    (output_dir / "segmentation_demo_results.json").write_text(json.dumps(records, indent=2))
    table = summarise(records, output_dir)
    best = max((m for m in METHODS if m != "ce"), key=lambda m: records[m]["eval_mean_iou"])
    picture(
        output_dir,
        {
            "teacher": teacher,
            "CE student": str(output_dir / "students" / "ce"),
            f"{best.upper()} student": str(output_dir / "students" / best),
        },
        args.data_seed,
    )
    sizes = {
        name: sum(p.numel() for p in SegformerForSemanticSegmentation.from_pretrained(f).parameters())
        for name, f in (("teacher", teacher_init), ("student", student_init))
    }
    print(
        f"\nData: {DEMO_NAME} ({source}). Teacher {sizes['teacher'] / 1e6:.2f} M parameters, student "
        f"{sizes['student'] / 1e6:.3f} M; teacher {args.teacher_steps} steps, students {args.student_steps}."
    )
    print(table)
    print(
        "\nTimes: "
        + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in phases)
        + f"; {(time.time() - start) / 60:.1f} min in all."
    )
    return records


if __name__ == "__main__":
    main()
