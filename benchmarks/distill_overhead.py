#!/usr/bin/env python
"""What distillation costs on top of training the student: ratios measured side by side in one run.

    python benchmarks/distill_overhead.py --json runs/bench/distill_overhead.json

ResNet-34 -> ResNet-18 (random init, transformers ResNet configs), 64-pixel inputs on CPU by default (224 with
`--image_size 224`, bf16 and channels-last with `--bf16 --channels_last` on a GPU). Every timing is the median over
`--repeats` interleaved rounds, so that drift of the machine affects all variants alike. Keys of the JSON:

- `step_overhead`: {kd, dkd, dist}: DistillationTrainer step ÷ (student CE training step + teacher forward)
  (target ≤ 1.10);
- `trainer_vs_loop`: DistillationTrainer KD step ÷ a minimal hand-written PyTorch KD loop (target ≤ 1.10);
- `loss_share`: share of the KD step spent in the loss function (target < 2 %);
- `cache_vs_prediction`: a step from cached teacher logits ÷ the live-teacher step, next to the prediction
  3·S / (3·S + T) from the student's and the teacher's forward times (within 10 %);
- `memory_ratio`: peak memory above the models' resident size, distillation ÷ (student training + teacher
  inference), measured in fresh processes on CPU (max RSS) or with CUDA's peak allocation counters;
- `pipeline_images_per_s`: decode + augment throughput of hfkd's training transform, one worker.

`--task semantic-segmentation` measures DIST's Cityscapes pair instead (DeepLabV3-R101 -> DeepLabV3-R18 of
`hfkd.models.smp`, output stride 8, random init; batch 2, crop 128 x 256 on CPU, 512 x 1024 on a GPU): the
step overhead and the peak-memory ratio of per-pixel KD, DIST (with its auxiliary term) and CWD, and images/s.
`--task object-detection` measures the same for DETR-R50 -> DETR-R18 (transformers DETR on ResNet-50- and
ResNet-18-shaped backbones, 80 classes, 100 queries, random init; batch 2, 320 x 320 images with 5 random boxes each
on CPU, 800 x 1333 on a GPU) with KD and DIST in their DETR form (hfkd.tasks.detection.distill: matched queries'
classes and boxes, unmatched queries to no-object). `--task object-detection/faster-rcnn` measures Faster R-CNN
R101-FPN -> R50-FPN (torchvision, hfkd.models.torchvision_detection; frozen BatchNorm and three trainable stages as
ImageNet-initialised detectors, random init, 80 classes; same images) with KD, DKD and DIST on the student's sampled
RoIs (the teacher's box head run on them) and DIST + mimic on the FPN levels; `--task object-detection/retinanet`
RetinaNet R101-FPN -> R50-FPN with DIST per level on sigmoid scores, and DIST + mimic.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def resnet(depths: list[int], num_labels: int = 1000):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        layer_type="basic", depths=depths, hidden_sizes=[64, 128, 256, 512], embedding_size=64, num_labels=num_labels
    )
    return ResNetForImageClassification(config)


def student_model():
    return resnet([2, 2, 2, 2])  # ResNet-18


def teacher_model():
    return resnet([3, 4, 6, 3])  # ResNet-34


def make_batch(batch_size: int, image_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
        "labels": torch.randint(0, 1000, (batch_size,), generator=g).to(device),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_trainer(
    loss: str, student, teacher, args_ns, output_dir: str, cache_dir: str | None = None, loss_kwargs=None
):
    """A trainer of `loss` (`"dist+mimic"`: DIST with mimic as the detector's feature loss), ready for steps."""
    from hfkd import DistillationArguments, DistillationTrainer

    loss, _, feature_loss = loss.partition("+")
    args = DistillationArguments(
        distill_feature_loss=feature_loss or None,
        output_dir=output_dir,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        distill_loss=loss,
        distill_loss_kwargs=loss_kwargs,
        per_device_train_batch_size=args_ns.batch_size,
        optim="sgd",
        learning_rate=0.01,
        save_strategy="no",
        bf16=args_ns.bf16,
        disable_tqdm=True,
        teacher_cache_dir=cache_dir,
        distill_channels_last=args_ns.channels_last,
    )
    trainer = DistillationTrainer(model=student, teacher_model=None if cache_dir else teacher, args=args)
    trainer.create_optimizer()
    # Set by the training loop; a step outside `train()` needs it.
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def trainer_step(trainer, batch) -> None:
    model = trainer.model
    trainer.training_step(model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def median_times(variants: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each variant over `repeats` interleaved rounds (after one warm-up call each), so that
    drift of the machine affects all variants alike."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def measure_speed(args: argparse.Namespace) -> dict:
    from hfkd.losses import dist_loss, dkd_loss, kd_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    batch = make_batch(args.batch_size, args.image_size, device)
    batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=memory_format)
    teacher = teacher_model().to(device, memory_format=memory_format).eval().requires_grad_(False)
    student = student_model().to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.bf16)

    def student_step() -> None:
        with autocast:
            logits = student(pixel_values=batch["pixel_values"]).logits
        F.cross_entropy(logits.float(), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_forward() -> torch.Tensor:
        with torch.no_grad(), autocast:
            return teacher(pixel_values=batch["pixel_values"]).logits

    def student_forward() -> torch.Tensor:
        with torch.no_grad(), autocast:
            return student(pixel_values=batch["pixel_values"]).logits

    def loop_step(teacher_logits: torch.Tensor | None = None) -> None:
        with torch.no_grad(), autocast:
            target = teacher(pixel_values=batch["pixel_values"]).logits if teacher_logits is None else teacher_logits
        with autocast:
            logits = student(pixel_values=batch["pixel_values"]).logits
        loss = F.cross_entropy(logits.float(), batch["labels"]) + kd_loss(logits, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cached_logits = teacher_forward().float()
    sample_logits = (torch.randn_like(cached_logits, requires_grad=True), cached_logits)
    loss_fns = {
        "kd": lambda: kd_loss(*sample_logits).backward(),
        "dkd": lambda: dkd_loss(*sample_logits, batch["labels"]).backward(),
        "dist": lambda: dist_loss(*sample_logits).backward(),
    }
    trainers = {
        name: build_trainer(name, student, teacher, args, f"{args.workdir}/{name}") for name in ("kd", "dkd", "dist")
    }
    # A teacher cache with the batch's teacher logits (full logits): the trainer's offline path, no teacher forward.
    from hfkd.teachers.cache.build import build_teacher_cache

    g = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, args.image_size, args.image_size), generator=g, dtype=torch.uint8)
        for _ in range(args.batch_size)
    ]
    cache_dir = f"{args.workdir}/teacher_cache"
    if not os.path.exists(os.path.join(cache_dir, "cache_config.json")):
        build_teacher_cache(
            teacher,
            images,
            cache_dir,
            teacher_name="resnet-34 (random)",
            size=(args.image_size, args.image_size),
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
            top_k=None,
            device=device,
            progress=False,
        )
    cached_trainer = build_trainer("kd", student, None, args, f"{args.workdir}/cached", cache_dir=cache_dir)
    # The rows as the data loader's workers put them in the batch (ReplayTransform): the step itself reads nothing.
    teacher_logits = cached_trainer.teacher.cache.teacher_logits(0, torch.arange(args.batch_size))
    cached_batch = {**batch, "teacher_logits": torch.as_tensor(teacher_logits).to(device)}
    variants: dict[str, Callable[[], object]] = {
        "student_step": student_step,
        "teacher_forward": teacher_forward,
        "student_forward": student_forward,
        "loop_kd": loop_step,
        "trainer_cached_kd": lambda: trainer_step(cached_trainer, dict(cached_batch)),
        **{f"trainer_{name}": (lambda t=t: trainer_step(t, dict(batch))) for name, t in trainers.items()},
        **{f"loss_{name}": fn for name, fn in loss_fns.items()},
    }
    median = median_times(variants, args.repeats, device)
    base = median["student_step"] + median["teacher_forward"]
    predicted = 3 * median["student_forward"] / (3 * median["student_forward"] + median["teacher_forward"])
    measured = median["trainer_cached_kd"] / median["trainer_kd"]
    return {
        "median_seconds": median,
        "step_overhead": {name: median[f"trainer_{name}"] / base for name in ("kd", "dkd", "dist")},
        "trainer_vs_loop": median["trainer_kd"] / median["loop_kd"],
        "loss_share": {name: median[f"loss_{name}"] / median[f"trainer_{name}"] for name in ("kd", "dkd", "dist")},
        "cache_vs_prediction": {
            "measured": measured,
            "predicted": predicted,
            "relative_error": abs(measured - predicted) / predicted,
            "note": "DistillationTrainer KD step from a teacher cache (its rows in the batch, as the data loader's "
            "workers give them) ÷ the same step with the live teacher",
        },
    }


# ----------------------------------------------------------------------- semantic segmentation, object detection


def segmentation_models():
    """DIST's Cityscapes pair, random init: DeepLabV3-R101 teacher, DeepLabV3-R18 student (hfkd.models.smp)."""
    from hfkd.models.smp import reference_network

    torch.manual_seed(0)
    teacher = reference_network("deeplabv3-resnet101", num_labels=19, pretrained=False)
    student = reference_network("deeplabv3-resnet18", num_labels=19, pretrained=False)
    return student, teacher


def segmentation_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    height, width = args.crop
    labels = torch.randint(0, 19, (args.batch_size, height, width), generator=g)
    labels[:, : height // 8] = 255  # some ignored pixels, as Cityscapes has
    pixels = torch.randn(args.batch_size, 3, height, width, generator=g)
    return {"pixel_values": pixels.to(device), "labels": labels.to(device)}


def segmentation_probe_loss(mode: str, out, target, batch) -> torch.Tensor:
    from hfkd.losses import cwd_loss, dist_loss, kd_loss

    mask = (batch["labels"] != 255)[:, ::8, ::8]
    return {"kd": lambda: kd_loss(out.logits, target.logits, temperature=1.0, mask=mask),
            "dist": lambda: dist_loss(out.logits, target.logits),
            "cwd": lambda: cwd_loss(out.logits, target.logits)}[mode]()  # fmt: skip


def detection_models():
    """DETR on a ResNet-50 backbone (teacher) and on a ResNet-18 backbone (student), COCO's 80 classes and 100
    queries, random init (transformers configs, no timm, nothing downloaded)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    def detr(backbone: ResNetConfig) -> DetrForObjectDetection:
        config = DetrConfig(
            backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, num_labels=80,
            num_queries=100,
        )  # fmt: skip
        return DetrForObjectDetection(config)

    torch.manual_seed(0)
    teacher = detr(ResNetConfig())  # ResNet-50
    resnet18 = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                            out_features=["stage4"])  # fmt: skip
    return detr(resnet18), teacher


def detection_batch(args: argparse.Namespace, device: torch.device) -> dict:
    """Images of the crop's size with 5 random boxes each (normalised cx, cy, w, h) and their classes, as
    run_object_detection.py's collator gives them to a DETR."""
    g = torch.Generator().manual_seed(0)
    height, width = args.crop
    labels = []
    for _ in range(args.batch_size):
        size = torch.rand(5, 2, generator=g) * 0.4 + 0.05
        centre = size / 2 + torch.rand(5, 2, generator=g) * (1 - size)
        labels.append({
            "class_labels": torch.randint(0, 80, (5,), generator=g).to(device),
            "boxes": torch.cat([centre, size], dim=1).to(device),
            "orig_size": torch.tensor([height, width], device=device),
        })  # fmt: skip
    pixels = torch.randn(args.batch_size, 3, height, width, generator=g)
    return {"pixel_values": pixels.to(device), "labels": labels}


def detection_probe_loss(mode: str, out, target, batch) -> torch.Tensor:
    from hfkd.losses._detr import detr_distill_loss

    hparams = {"kd": {"temperature": 4.0}, "dist": {}}[mode]  # the trainer's defaults for KD and DIST
    return detr_distill_loss(out.logits, out.pred_boxes, target.logits, target.pred_boxes, loss=mode,
                             use_sigmoid=False, **hparams)["loss"]  # fmt: skip


def torchvision_models(network: str):
    """(student, teacher): torchvision's `network` on ResNet-50 and ResNet-101 FPN backbones, 80 classes, random init
    with frozen BatchNorm and three trainable stages (as the references' ImageNet-initialised detectors)."""
    from hfkd.models.torchvision_detection import TorchvisionDetectionConfig, TorchvisionForObjectDetection

    def build(depth: int):
        config = TorchvisionDetectionConfig(network=network.format(depth=depth), num_labels=80)
        return TorchvisionForObjectDetection(config)

    torch.manual_seed(0)
    return build(50), build(101)


def torchvision_probe_loss(mode: str, out, target, batch) -> torch.Tensor:
    """What the trainer computes for `mode` on a torchvision detector's outputs (the distiller of the trainer)."""
    from hfkd.losses import create_loss
    from hfkd.losses.base import DistillBatch
    from hfkd.tasks.detection.torchvision_distill import TorchvisionDetectorDistillation

    key, _, feature = mode.partition("+")
    student, teacher = torchvision_probe_loss.models
    logit_loss = create_loss(key, **({"warmup_epochs": 0} if key == "dkd" else {}))
    feature_loss = create_loss(feature) if feature else None
    distiller = TorchvisionDetectorDistillation(logit_loss, student, teacher, feature_loss)
    return distiller(out, target, DistillBatch())["loss"]


@dataclass(frozen=True)
class DenseTask:
    """A `--task` measured as segmentation's pair is: step overhead and peak-memory ratio of each loss, images/s."""

    pair: str
    models: Callable[[], tuple]  # () -> (student, teacher)
    batch: Callable[[argparse.Namespace, torch.device], dict]
    probe_loss: Callable[..., torch.Tensor]  # (mode, student output, teacher output, batch) -> distillation term
    loss_kwargs: dict[str, dict | None]  # DistillationTrainer's `distill_loss_kwargs` of each loss
    crop: dict[str, list[int]]  # height, width on "cuda" and "cpu"
    batch_size: int


DENSE_TASKS = {
    "semantic-segmentation": DenseTask(
        pair="DeepLabV3-R101 -> DeepLabV3-R18 (smp, output stride 8, random init)",
        models=segmentation_models,
        batch=segmentation_batch,
        probe_loss=segmentation_probe_loss,
        # DIST with the auxiliary head's term, as DIST's recipe.
        loss_kwargs={"kd": None, "dist": {"aux_weight": 0.4}, "cwd": None},
        crop={"cuda": [512, 1024], "cpu": [128, 256]},
        batch_size=2,  # DIST's segmentation recipes: 2 per GPU
    ),
    "object-detection": DenseTask(
        pair="DETR-R50 -> DETR-R18 (transformers, 80 classes, 100 queries, random init)",
        models=detection_models,
        batch=detection_batch,
        probe_loss=detection_probe_loss,
        # The trainer wraps both into their DETR form (hfkd.tasks.detection.distill), on matched queries.
        loss_kwargs={"kd": None, "dist": None},
        crop={"cuda": [800, 1333], "cpu": [320, 320]},
        batch_size=2,
    ),
    "object-detection/faster-rcnn": DenseTask(
        pair="Faster R-CNN R101-FPN -> R50-FPN (torchvision, 80 classes, frozen BN, random init)",
        models=lambda: torchvision_models("fasterrcnn_resnet{depth}_fpn"),
        batch=detection_batch,
        probe_loss=torchvision_probe_loss,
        # On the student's sampled RoIs, background included; DKD as MDistiller's detection (no warm-up).
        loss_kwargs={"kd": None, "dkd": {"warmup_epochs": 0}, "dist": None, "dist+mimic": None},
        crop={"cuda": [800, 1333], "cpu": [320, 320]},
        batch_size=2,
    ),
    "object-detection/retinanet": DenseTask(
        pair="RetinaNet R101-FPN -> R50-FPN (torchvision, 80 classes, frozen BN, random init)",
        models=lambda: torchvision_models("retinanet_resnet{depth}_fpn"),
        batch=detection_batch,
        probe_loss=torchvision_probe_loss,
        loss_kwargs={"dist": None, "dist+mimic": None},
        crop={"cuda": [800, 1333], "cpu": [320, 320]},
        batch_size=2,
    ),
}


def measure_dense_speed(args: argparse.Namespace, task: DenseTask) -> dict:
    """Trainer steps of each of the task's losses ÷ (the student's own training step + the teacher's forward)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype, enabled=args.bf16)
    batch = task.batch(args, device)
    student, teacher = task.models()
    student, teacher = student.to(device), teacher.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)

    def student_step() -> None:
        with autocast:
            loss = student(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.no_grad(), autocast:
            teacher(pixel_values=batch["pixel_values"])

    trainers = {
        name: build_trainer(name, student, teacher, args, f"{args.workdir}/{args.task}-{name}", loss_kwargs=extra)
        for name, extra in task.loss_kwargs.items()
    }
    for trainer in trainers.values():  # the task the trainer read from the student (its class name)
        assert trainer.task.name == args.task.partition("/")[0], (trainer.task.name, args.task)
    variants: dict[str, Callable[[], object]] = {
        "student_step": student_step,
        "teacher_forward": teacher_forward,
        **{f"trainer_{name}": (lambda t=t: trainer_step(t, dict(batch))) for name, t in trainers.items()},
    }
    median = median_times(variants, args.repeats, device)
    base = median["student_step"] + median["teacher_forward"]
    return {
        "median_seconds": median,
        "step_overhead": {name: median[f"trainer_{name}"] / base for name in trainers},
        "images_per_s": {name: args.batch_size / median[f"trainer_{name}"] for name in trainers},
    }


_DENSE_PROBE = """
import sys, threading, time, psutil, torch
sys.path.insert(0, {bench!r})
sys.path.insert(0, {repo!r})
import argparse, distill_overhead as b
task = b.DENSE_TASKS[{task!r}]
args = argparse.Namespace(batch_size={batch_size}, crop={crop!r})
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
batch = task.batch(args, device)
student, teacher = task.models()
student, teacher = student.to(device), teacher.to(device).eval().requires_grad_(False)
task.probe_loss.models = (student, teacher)
opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
process, peak, done = psutil.Process(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.0005)
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    base = process.memory_info().rss
    thread = threading.Thread(target=sample); thread.start()
for _ in range(3):
    if {mode!r} == "teacher":
        with torch.no_grad():
            teacher(pixel_values=batch["pixel_values"])
        continue
    out = student(**batch)
    loss = out.loss
    if {mode!r} != "student":
        with torch.no_grad():
            target = teacher(pixel_values=batch["pixel_values"])
        loss = loss + task.probe_loss({mode!r}, out, target, batch)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
if device.type == "cuda":
    print(torch.cuda.max_memory_allocated() - base)
else:
    done[0] = True; thread.join()
    print(peak[0] - base)
"""


def measure_dense_memory(args: argparse.Namespace, task: DenseTask) -> dict:
    """Peak memory above the resident models: each loss's step ÷ (student training + teacher inference)."""
    peaks = {}
    for mode in ("student", "teacher", *task.loss_kwargs):
        code = _DENSE_PROBE.format(
            bench=str(Path(__file__).resolve().parent), repo=str(Path(__file__).resolve().parents[1]),
            task=args.task, batch_size=args.batch_size, crop=tuple(args.crop), mode=mode,
        )  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        peaks[mode] = int(out.stdout.strip().splitlines()[-1])
    base = max(peaks["student"] + peaks["teacher"], 1)
    return {"peak_bytes": peaks, "ratio": {name: peaks[name] / base for name in task.loss_kwargs}}


def dense_main(args: argparse.Namespace) -> dict:
    task = DENSE_TASKS[args.task]
    results = measure_dense_speed(args, task)
    results["memory_ratio"] = measure_dense_memory(args, task)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results["setting"] = {
        "task": args.task, "pair": task.pair, "device": device, "crop": list(args.crop),
        **{k: getattr(args, k) for k in ("batch_size", "repeats", "bf16")},
    }  # fmt: skip
    print(f"\n{task.pair}, {device}, batch {args.batch_size}, crop {args.crop[0]}x{args.crop[1]}, bf16={args.bf16}")
    print(f"{'measure':<36} {'value':>10}  target")
    for name in task.loss_kwargs:
        print(f"{'step overhead, ' + name.upper():<36} {results['step_overhead'][name]:>10.3f}  ≤ 1.10")
        print(f"{'peak memory ratio, ' + name.upper():<36} {results['memory_ratio']['ratio'][name]:>10.3f}  ≤ 1.15")
        print(f"{'images/s, ' + name.upper():<36} {results['images_per_s'][name]:>10.2f}")
    return results


def _memory_probe(mode: str, args: argparse.Namespace) -> int:
    """Peak memory above the resident models during three steps, in a fresh process: bytes.

    CPU: the process's resident set size sampled every 0.5 ms by a thread, minus its size just before the steps
    (`ru_maxrss` would include transient peaks of model construction in the baseline). CUDA: the allocator's peak
    counter minus the memory allocated before the steps.
    """
    code = f"""
import sys, threading, time, psutil, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import distill_overhead as b
from hfkd.losses import kd_loss
import torch.nn.functional as F
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
batch = b.make_batch({args.batch_size}, {args.image_size}, device)
student, teacher = b.student_model().to(device), b.teacher_model().to(device).eval().requires_grad_(False)
opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
process, peak, done = psutil.Process(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.0005)
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    base = process.memory_info().rss
    thread = threading.Thread(target=sample); thread.start()
for _ in range(3):
    if {mode!r} in ("student", "distill"):
        logits = student(pixel_values=batch["pixel_values"]).logits
        loss = F.cross_entropy(logits, batch["labels"])
        if {mode!r} == "distill":
            with torch.no_grad():
                target = teacher(pixel_values=batch["pixel_values"]).logits
            loss = loss + kd_loss(logits, target)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            teacher(pixel_values=batch["pixel_values"]).logits
if device.type == "cuda":
    print(torch.cuda.max_memory_allocated() - base)
else:
    done[0] = True; thread.join()
    print(peak[0] - base)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def measure_memory(args: argparse.Namespace) -> dict:
    peaks = {mode: _memory_probe(mode, args) for mode in ("student", "teacher", "distill")}
    return {"peak_bytes": peaks, "ratio": peaks["distill"] / max(peaks["student"] + peaks["teacher"], 1)}


def measure_pipeline(args: argparse.Namespace) -> float:
    import numpy as np
    from PIL import Image

    from hfkd.data.transforms import ImageConfig, build_transforms

    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(64):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    transform = build_transforms(ImageConfig(size=(224, 224)), train=True, train_augment="rrc")
    torch.set_num_threads(1)  # one worker
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < args.pipeline_seconds:
        for data in encoded:
            transform(Image.open(io.BytesIO(data)))
            count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--pipeline_seconds", type=float, default=5.0)
    parser.add_argument("--workdir", default="runs/bench")
    parser.add_argument("--task", default="image-classification", choices=["image-classification", *DENSE_TASKS])
    parser.add_argument("--crop", type=int, nargs=2, default=None, help="segmentation or detection crop, height width")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.task in DENSE_TASKS:
        task = DENSE_TASKS[args.task]
        args.crop = args.crop or task.crop["cuda" if torch.cuda.is_available() else "cpu"]
        if args.batch_size == 32:  # the classification default
            args.batch_size = task.batch_size
        results = dense_main(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))
        return results

    results = measure_speed(args)
    results["memory_ratio"] = measure_memory(args)
    results["pipeline_images_per_s"] = measure_pipeline(args)
    results["setting"] = {
        "pair": "ResNet-34 -> ResNet-18 (random init)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        **{k: getattr(args, k) for k in ("batch_size", "image_size", "repeats", "bf16", "channels_last")},
    }
    rows = [
        ("step overhead, KD", results["step_overhead"]["kd"], "≤ 1.10"),
        ("step overhead, DKD", results["step_overhead"]["dkd"], "≤ 1.10"),
        ("step overhead, DIST", results["step_overhead"]["dist"], "≤ 1.10"),
        ("trainer ÷ hand-written loop (KD)", results["trainer_vs_loop"], "≤ 1.10"),
        ("loss share of the step (KD)", results["loss_share"]["kd"], "< 0.02"),
        ("cached ÷ live step", results["cache_vs_prediction"]["measured"],
         f"≈ {results['cache_vs_prediction']['predicted']:.3f} (±10 %)"),
        ("peak memory ratio", results["memory_ratio"]["ratio"], "≤ 1.15"),
        ("pipeline images/s (1 worker)", results["pipeline_images_per_s"], ""),
    ]  # fmt: skip
    print(
        f"\n{results['setting']['pair']}, {results['setting']['device']}, batch {args.batch_size}, "
        f"{args.image_size} px, bf16={args.bf16}, channels_last={args.channels_last}"
    )
    print(f"{'measure':<36} {'value':>10}  target")
    for name, value, target in rows:
        print(f"{name:<36} {value:>10.3f}  {target}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
