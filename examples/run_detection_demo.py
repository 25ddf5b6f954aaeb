#!/usr/bin/env python
"""The detection demo: what distillation buys a small object detector on real images, offline, on a CPU.

    python examples/run_detection_demo.py --output_dir runs/detection_demo

No detection data set installs offline, so the scenes are composed of real images (`hfkd.tasks.detection.demo`, the
data of `--dataset fashion-mnist-detection-scenes`): one to three Fashion-MNIST items (Debian's dataset-fashion-mnist;
scikit-learn's digits without it) pasted at random places and scales on a 64 x 64 canvas, each boxed tightly around
its visible ink; here each item's class is replaced by its group's (`GROUPS`: tops, trousers and bags, footwear;
3,000 training and 300 evaluation scenes). They go through the same command line as `hfkd distill`
(`examples/run_image_distill.py`): a torchvision RetinaNet-R34 teacher (random init) is trained with its own loss
first (or reused from the output folder), then a RetinaNet-R18 student, from the same seed and so the same random
init each time, for a quarter of the teacher's steps: with its own loss alone (CE in the table: the focal and box
losses) and with each distillation loss in `--methods` on top of it. The output folder gets
`detection_demo_results.json`, `.md`, a chart (`detection_demo_results.png`), a picture of predicted boxes
(`detection_demo_predictions.png`: truth, teacher, CE student, best distilled student on evaluation scenes) and one
model card per student.

Loss settings, hfkd's registered defaults (the papers'): DIST on RetinaNet's sigmoid scores, each position of an FPN
level one row (β = γ = τ = 1, weight 1); mimic, the MSE between the FPN levels through 1 x 1 convs (weight 1); CWD on
the FPN levels (τ = 4, weight 3); PKD on the FPN levels (weight 6; not run by default, to stay within 10 minutes on 2
cores).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_image_distill  # noqa: E402

from hfkd.tasks.detection.data import detection_features  # noqa: E402
from hfkd.tasks.detection.demo import DEMO_NAME, load_demo_detection_scenes  # noqa: E402

TEACHER, STUDENT = "retinanet_resnet34_fpn", "retinanet_resnet18_fpn"
METHODS = ("dist", "mimic", "pkd", "cwd")
"""The distillation losses the demo can run (`--methods`), each with its registered defaults."""
DEFAULT_METHODS = ("dist", "mimic", "cwd")
CANVAS = 64
# Fashion-MNIST's classes 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
# 9 Ankle boot, in three groups: a from-scratch detector learns them in minutes on a CPU, where the ten classes (the
# five tops are hard to tell apart at 16 to 32 pixels) take far longer.
GROUPS = {"top": [0, 2, 3, 4, 6], "trouser or bag": [1, 8], "footwear": [5, 7, 9]}
LABELS = {"teacher": "teacher (longer training)", "ce": "student, CE (its own loss alone)"}
SCORE = 0.4
"""The score above which the picture draws a detection."""


def write_scenes(args: argparse.Namespace, folder: Path) -> list[str]:
    """The scenes, each item's class replaced by its group's (`GROUPS`), as a `save_to_disk` folder with its
    `id2label.json`; returns the group names."""
    scenes, items = load_demo_detection_scenes(args.train_scenes, args.eval_scenes, seed=args.data_seed, canvas=CANVAS)
    group_of = {item: number for number, members in enumerate(GROUPS.values()) for item in members}

    def regroup(batch: dict[str, list]) -> dict[str, list]:
        batch["objects"] = [{**o, "category": [group_of[c] for c in o["category"]]} for o in batch["objects"]]
        return batch

    names = list(GROUPS)
    scenes = scenes.map(regroup, batched=True, features=detection_features(names))
    scenes.save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    groups = "; ".join(f"{name}: {', '.join(items[i] for i in members)}" for name, members in GROUPS.items())
    print(f"Scenes in {len(names)} groups of items ({groups}).")
    return names


def common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--dataset", args.data, "--image_size", str(CANVAS), "--use_cpu", "--report_to", "none",
        "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "50",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "50",
        "--optim", "adamw_torch", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05", "--weight_decay", "1e-4",
        "--dataloader_num_workers", "0", "--seed", "0", "--overwrite_output_dir",
    ]  # fmt: skip


def train_teacher(args: argparse.Namespace) -> tuple[str, dict]:
    folder = Path(args.output_dir) / "teacher"
    results, stamp_file = folder / "eval_results.json", folder / "demo_teacher.json"
    stamp = {"network": TEACHER, "groups": GROUPS, "steps": args.teacher_steps, "learning_rate": args.learning_rate,
             **{key: getattr(args, key) for key in ("train_scenes", "eval_scenes", "data_seed")}}  # fmt: skip
    if results.exists() and stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        print(f"Reusing the teacher in {folder} (delete it to retrain).")
        return str(folder), json.loads(results.read_text())
    metrics = run_image_distill.main(
        ["--student", TEACHER, "--student_pretrained", "false", "--loss", "ce", "--output_dir", str(folder),
         "--max_steps", str(args.teacher_steps), "--learning_rate", str(args.learning_rate), *common_flags(args)]
    )  # fmt: skip
    stamp_file.write_text(json.dumps(stamp))
    return str(folder), metrics


def train_student(args: argparse.Namespace, teacher: str, method: str) -> dict:
    folder = Path(args.output_dir) / "students" / method
    flags = ["--loss", "ce"] if method == "ce" else ["--teacher", teacher, "--loss", method]
    baseline = Path(args.output_dir) / "students" / "ce" / "eval_results.json"
    if method != "ce" and baseline.exists():
        flags += ["--baseline_metrics", str(baseline)]
    return run_image_distill.main(
        ["--student", STUDENT, "--student_pretrained", "false", *flags, "--output_dir", str(folder),
         "--max_steps", str(args.student_steps), "--learning_rate", str(args.learning_rate), *common_flags(args)]
    )  # fmt: skip


def summarise(records: dict[str, dict], output_dir: Path) -> str:
    """The results table (`detection_demo_results.md`) and chart (`.png`); returns the table."""
    rows = ["| model | mAP (%) | AP50 (%) | AP75 (%) |", "|:--|--:|--:|--:|"]
    for name, metrics in records.items():
        label = LABELS.get(name, f"student, {name.upper()}")
        scores = " | ".join(f"{100 * metrics[key]:.2f}" for key in ("eval_map", "eval_map_50", "eval_map_75"))
        rows.append(f"| {label} | {scores} |")
    table = "\n".join(rows)
    (output_dir / "detection_demo_results.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = {k: 100 * v["eval_map"] for k, v in records.items() if k != "teacher"}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar([k.upper() for k in students], list(students.values()), color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in students.values()], label_type="edge")
    teacher = 100 * records["teacher"]["eval_map"]
    ax.axhline(teacher, color="#c44e52", linestyle="--", label=f"teacher {teacher:.2f}")
    ax.set_ylim(0, max(teacher, *students.values()) * 1.25 + 1)  # from 0: bar heights compare honestly
    ax.set_ylabel("mAP (%)")
    ax.set_title("Detection student: its own loss alone vs distillation")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(output_dir / "detection_demo_results.png", dpi=120)
    plt.close(fig)
    return table


@torch.no_grad()
def predicted_boxes(folders: dict[str, str], images: list) -> dict[str, list[torch.Tensor]]:
    """Each model's detections per image, as the saved model card's usage runs them: (n, 6) rows of x1, y1, x2, y2
    (pixels of the image), score, class, scores above `SCORE`."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    import hfkd.models.torchvision_detection  # noqa: F401  (registers the model type with the Auto classes)

    found = {}
    for name, folder in folders.items():
        processor = AutoImageProcessor.from_pretrained(folder)
        model = AutoModelForObjectDetection.from_pretrained(folder).eval()
        rows = []
        for image in images:
            table = model(**processor(images=image, return_tensors="pt")).detections[0]
            table = table[table[:, 4] > SCORE]
            table[:, :4] *= torch.tensor([image.width, image.height] * 2)
            rows.append(table)
        found[name] = rows
    return found


def picture(output_dir: Path, folders: dict[str, str], scenes, names: list[str], count: int = 4) -> None:
    """Evaluation scenes with their true boxes and each model's detections above `SCORE`, colour per class."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = [scenes[i] for i in range(count)]
    found = predicted_boxes(folders, [row["image"] for row in rows])
    fig, axes = plt.subplots(count, 1 + len(folders), figsize=(2.4 * (1 + len(folders)), 2.4 * count), squeeze=False)
    for r, row in enumerate(rows):
        objects = row["objects"]
        truth = [[x, y, x + w, y + h, 1.0, c] for (x, y, w, h), c in zip(objects["bbox"], objects["category"])]
        panels = {"truth": torch.tensor(truth).reshape(-1, 6), **{name: found[name][r] for name in folders}}
        for col, (name, boxes) in enumerate(panels.items()):
            ax = axes[r, col]
            ax.imshow(np.asarray(row["image"]))
            for x1, y1, x2, y2, score, label in boxes.tolist():
                colour = plt.cm.tab10(int(label) % 10)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
                text = names[int(label)] if name == "truth" else f"{names[int(label)]} {score:.2f}"
                above = y1 > CANVAS / 8  # else inside the box: a label above it would leave the picture
                ax.text(x1, y1 - 1 if above else y1 + 1, text, color=colour, fontsize=7,
                        va="bottom" if above else "top", backgroundcolor=(0, 0, 0, 0.6))  # fmt: skip
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(output_dir / "detection_demo_predictions.png", dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--output_dir", default="runs/detection_demo")
    parser.add_argument("--teacher_steps", type=int, default=600, help="teacher optimiser steps (batch 8)")
    parser.add_argument("--student_steps", type=int, default=150, help="each student's optimiser steps (batch 8)")
    parser.add_argument("--train_scenes", type=int, default=3000, help="training scenes (the teacher sees them all)")
    parser.add_argument("--eval_scenes", type=int, default=300, help="evaluation scenes")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW's peak learning rate (cosine)")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the composed scenes")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS),
                        help="the distillation losses, each a student besides the CE one")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start, phases = time.time(), []
    args.data = str(output_dir / "scenes")
    names = write_scenes(args, Path(args.data))
    clock = time.time()
    teacher, teacher_metrics = train_teacher(args)
    phases.append(("teacher", time.time() - clock))
    records = {"teacher": teacher_metrics}
    for method in ["ce", *args.methods]:
        clock = time.time()
        records[method] = train_student(args, teacher, method)
        phases.append((f"student {method}", time.time() - clock))
    (output_dir / "detection_demo_results.json").write_text(json.dumps(records, indent=2))
    table = summarise(records, output_dir)
    best = max(args.methods, key=lambda m: records[m]["eval_map"])
    folders = {"teacher": teacher, "CE student": str(output_dir / "students" / "ce"),
               f"{best.upper()} student": str(output_dir / "students" / best)}  # fmt: skip
    from datasets import load_from_disk

    picture(output_dir, folders, load_from_disk(args.data)["validation"], names)
    print(
        f"\nData: {DEMO_NAME} ({', '.join(names)}), {args.train_scenes} training and {args.eval_scenes} evaluation "
        f"scenes. Teacher {TEACHER}, {args.teacher_steps} steps; students {STUDENT}, {args.student_steps} steps each, "
        "the same seed."
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
