"""Training throughput of a recipe's distillation step, and the wall time it projects for the recipe's full run.

    python benchmarks/recipe_throughput.py --config recipes/cifar100/dkd/resnet8x4_from_resnet32x4.yaml

Builds the recipe's student and teacher with random weights (throughput does not depend on them: a teacher folder
the recipe expects from an earlier run, or a timm name, becomes a random-init model of that architecture), its
loss, loss kwargs and weights, its per-device batch, precision and channels-last setting, and times
`DistillationTrainer.training_step` plus the optimizer step on synthetic batches of the dataset's resolution and
class count, on the GPU when there is one. It prints images/s and the projected time of the recipe's
`num_train_epochs` over the training split and its copies of each image (`--views_per_image`; data loading and
per-epoch evaluation excluded; with enough dataloader workers the loader keeps up, see `distill_overhead.py
--pipeline`), side by side with a student-only cross-entropy step on the same batch, so the teacher's share is
visible.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(REPO / "benchmarks"))  # distill_overhead's step helper, when imported rather than run

# Training-split sizes of the datasets the recipes name (images per epoch).
TRAIN_SIZES = {
    "uoft-cs/cifar100": 50_000,
    "cifar100": 50_000,
    "ILSVRC/imagenet-1k": 1_281_167,
    "imagenet-1k": 1_281_167,
}


def parse_recipe(config: str, output_dir: str, use_cpu: bool):
    from hfkd.commands.arguments import build_parser

    flags = ["--config", config, "--output_dir", output_dir, "--report_to", "none", "--save_strategy", "no"]
    flags += ["--eval_strategy", "no", "--disable_tqdm", "true"]
    if use_cpu:
        flags += ["--use_cpu", "true", "--bf16", "false", "--fp16", "false"]
    model_args, data_args, _, args, _ = build_parser().parse(flags)
    return model_args, data_args, args


def build_model(name: str, num_labels: int, image_size: int):
    """A random-init model of `name`'s architecture (timm names, CIFAR zoo aliases, expected teacher folders)."""
    from hfkd.commands.smoke import smoke_model_name
    from hfkd.models.loading import load_image_classifier, resolve_model_name

    target, _ = smoke_model_name(name, num_labels, image_size)
    if Path(target).is_dir() and not Path(name).is_dir():
        raise SystemExit(
            f"{name!r} is a transformers Hub model whose config cannot be built offline; run this benchmark where "
            "the Hub is reachable, or on a recipe with timm / CIFAR-zoo models."
        )
    return load_image_classifier(resolve_model_name(target), num_labels=num_labels, pretrained=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="The recipe YAML.")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps (after the warm-up steps).")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps first (allocator, cuDNN autotuning).")
    parser.add_argument("--train-size", type=int, help="Training images per epoch (known for the recipes' datasets).")
    parser.add_argument("--json", help="Also write the figures to this file.")
    cli = parser.parse_args(argv)

    from distill_overhead import trainer_step

    from hfkd import DistillationTrainer
    from hfkd.commands.smoke import SMOKE_DATASETS

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as scratch:
        model_args, data_args, args = parse_recipe(cli.config, scratch, use_cpu=not cuda)
        image_size, num_labels = SMOKE_DATASETS[data_args.dataset]
        train_size = cli.train_size or TRAIN_SIZES.get(data_args.dataset)
        if train_size is None:
            raise SystemExit(f"Unknown training-split size for {data_args.dataset!r}: pass --train-size.")
        torch.manual_seed(0)
        student = build_model(model_args.student_model_name_or_path, num_labels, image_size)
        teacher = build_model(args.teacher_model_name_or_path, num_labels, image_size)
        batch_size = args.per_device_train_batch_size
        device = torch.device("cuda" if cuda else "cpu")
        batch = {
            "pixel_values": torch.randn(batch_size, 3, image_size, image_size, device=device),
            "labels": torch.randint(0, num_labels, (batch_size,), device=device),
        }

        def time_steps(trainer) -> float:
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by the training loop; a bare step needs it

            def step() -> None:
                trainer_step(trainer, dict(batch))

            for _ in range(cli.warmup):
                step()
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(cli.steps):
                step()
            if cuda:
                torch.cuda.synchronize()
            return batch_size * cli.steps / (time.perf_counter() - start)

        distill_ips = time_steps(DistillationTrainer(model=student, teacher_model=teacher, args=args))
        args.distill_loss, args.distill_loss_kwargs, args.distill_ce_weight = "ce", {}, 1.0
        student_ips = time_steps(DistillationTrainer(model=student, args=args))

    epochs = args.num_train_epochs
    # Copies of each image (--views_per_image): StreamLined's epoch shows each image `views` times; DeiT's repeated
    # copies keep RASampler's epoch of train_size // 256 * 256 samples.
    views, repeated = args.distill_views_per_image, args.distill_view_placement == "repeated"
    samples = train_size // 256 * 256 if views > 1 and repeated else train_size * views
    hours = epochs * samples / distill_ips / 3600
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "recipe": cli.config,
        "device": device_name,
        "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
        "batch_size": batch_size,
        "image_size": image_size,
        "distill_images_per_s": distill_ips,
        "student_ce_images_per_s": student_ips,
        "distill_over_student_time": student_ips / distill_ips,
        "epochs": epochs,
        "train_size": train_size,
        "samples_per_epoch": samples,
        "projected_hours": hours,
    }
    print(
        f"{cli.config} on {device_name}, {result['precision']}, batch {batch_size} at {image_size} px:\n"
        f"  distillation step: {distill_ips:,.0f} images/s; student-only CE step: {student_ips:,.0f} images/s "
        f"(distillation takes {result['distill_over_student_time']:.2f}x the student step's time)\n"
        f"  projected: {epochs:g} epochs x {samples:,} samples ({train_size:,} images, {views} view(s) each) = "
        f"{hours:.2f} h of training steps "
        "(data loading and evaluation excluded)"
    )
    if cli.json:
        Path(cli.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
