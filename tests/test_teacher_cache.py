"""Offline distillation from a teacher cache: replayable views, top-k storage, equivalence with the live teacher."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torchvision.transforms.v2 import functional as TF
from transformers import ViTImageProcessor

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.losses import kd_loss
from hfkd.teachers.cache.build import build_teacher_cache
from hfkd.teachers.cache.replay import ReplayTransform
from hfkd.teachers.cache.store import TeacherCache, apply_view, logits_from_topk, view_params

from .testing_utils import perturbed, tiny_resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

SIZE, MEAN, STD = (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(count: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8) for _ in range(count)]


def _teacher():
    return perturbed(tiny_resnet(5, wide=True, seed=2).eval(), seed=7)


def test_views_are_a_pure_function_of_seed_epoch_and_index():
    first = view_params(0, 3, 5, 40, 48)
    assert first == view_params(0, 3, 5, 40, 48)
    others = {view_params(0, epoch, 5, 40, 48) for epoch in range(8)}
    assert len(others) > 1
    for epoch in range(20):
        (top, left, h, w), _ = view_params(1, epoch, 0, 40, 48)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 48 and h > 0 and w > 0


def test_topk_logits_keep_the_stored_probabilities():
    probs = torch.tensor([[0.5, 0.3], [0.9, 0.05]])
    indices = torch.tensor([[2, 0], [1, 3]])
    recovered = logits_from_topk(indices, probs, num_classes=5).softmax(-1)
    torch.testing.assert_close(recovered.gather(-1, indices), probs)
    rest = torch.tensor([[0.2 / 3] * 3, [0.05 / 3] * 3])
    mask = torch.ones(2, 5, dtype=torch.bool).scatter_(1, indices, False)
    torch.testing.assert_close(recovered[mask].view(2, 3), rest)


@pytest.mark.parametrize("top_k", [None, 3])
def test_cached_outputs_equal_the_live_teacher_on_the_same_crops(tmp_path, top_k):
    images, teacher = _images(), _teacher()
    config = build_teacher_cache(
        teacher,
        images,
        str(tmp_path),
        teacher_name="t",
        size=SIZE,
        mean=MEAN,
        std=STD,
        epochs=2,
        top_k=top_k,
        seed=4,
        batch_size=4,
        progress=False,
    )
    assert config.num_classes == 5 and config.num_samples == 6
    cache = TeacherCache(str(tmp_path))
    student_logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    for epoch in range(2):
        views = []
        for index, image in enumerate(images):
            box, flip = cache.view(epoch, index)
            assert (box, flip) == view_params(4, epoch, index, 40, 48)
            views.append(apply_view(image, box, flip, SIZE, MEAN, STD))
        with torch.no_grad():
            live = teacher(pixel_values=torch.stack(views)).logits
        cached = cache.teacher_logits(epoch, torch.arange(6))
        if top_k is None:
            torch.testing.assert_close(cached, live)
            torch.testing.assert_close(kd_loss(student_logits, cached), kd_loss(student_logits, live))
        else:
            top = live.softmax(-1).topk(3, dim=-1)
            torch.testing.assert_close(cached.softmax(-1).gather(-1, top.indices), top.values)


def test_trainer_from_cache_equals_trainer_with_live_teacher(tmp_path):
    images, teacher = _images(4), _teacher()
    build_teacher_cache(
        teacher,
        images,
        str(tmp_path / "cache"),
        teacher_name="t",
        size=SIZE,
        mean=MEAN,
        std=STD,
        top_k=None,
        seed=0,
        progress=False,
    )
    cache = TeacherCache(str(tmp_path / "cache"))
    pixels = torch.stack([apply_view(img, *cache.view(0, i), SIZE, MEAN, STD) for i, img in enumerate(images)])
    inputs = {"pixel_values": pixels, "labels": torch.tensor([0, 1, 2, 3]), "sample_index": torch.arange(4)}
    losses = []
    for kwargs in ({"teacher_model": teacher}, {}):
        student = tiny_resnet(5, seed=1).train()
        extra = {} if kwargs else {"teacher_cache_dir": str(tmp_path / "cache")}
        args = DistillationArguments(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True, **extra)
        trainer = DistillationTrainer(model=student, args=args, **kwargs)
        assert (trainer.teacher_model is None) == (not kwargs)
        losses.append(trainer.compute_loss(trainer.model, dict(inputs)))
    torch.testing.assert_close(losses[0], losses[1])


def test_the_data_loader_serves_the_cached_logits_and_the_step_reads_nothing(tmp_path, monkeypatch):
    """`ReplayTransform` puts each sample's cached logits in the batch (`teacher_logits`), read in the data loader;
    the training step then neither reads the cache nor copies a tensor to the host (a wait for a GPU)."""
    from datasets import Dataset

    from hfkd.data.datasets import add_sample_index

    images = _images(4)
    build_teacher_cache(_teacher(), images, str(tmp_path / "cache"), teacher_name="t", size=SIZE, mean=MEAN,
                        std=STD, top_k=None, seed=0, progress=False, epochs=2)  # fmt: skip
    cache = TeacherCache(str(tmp_path / "cache"))
    rows = [PILImage.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    data = add_sample_index(Dataset.from_dict({"img": rows, "label": [0, 1, 2, 3]}))
    data.set_transform(ReplayTransform(cache, SIZE, MEAN, STD, "img", "label"))
    batch = data[[2, 0]]
    torch.testing.assert_close(torch.stack(batch["teacher_logits"]), cache.teacher_logits(0, torch.tensor([2, 0])))

    args = DistillationArguments(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True, max_steps=4,
                                 per_device_train_batch_size=2, teacher_cache_dir=str(tmp_path / "cache"),
                                 save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = DistillationTrainer(model=tiny_resnet(5, seed=1), args=args, train_dataset=data)
    in_step, reads, served = [], [], []
    compute_loss, teacher_logits, cpu = trainer.compute_loss, TeacherCache.teacher_logits, torch.Tensor.cpu

    def step(model, inputs, *args, **kwargs):
        served.append((inputs["sample_index"].clone(), inputs["teacher_logits"].clone()))
        in_step.append(True)
        try:
            return compute_loss(model, inputs, *args, **kwargs)
        finally:
            in_step.pop()

    def read(self, epoch, indices):
        assert not in_step, "the training step read the teacher cache"
        reads.append(epoch)
        return teacher_logits(self, epoch, indices)

    def to_host(self, *args, **kwargs):
        assert not in_step, "the training step copied a tensor to the host"
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(trainer, "compute_loss", step)
    monkeypatch.setattr(TeacherCache, "teacher_logits", read)
    monkeypatch.setattr(torch.Tensor, "cpu", to_host)
    trainer.train()
    assert len(served) == 4 and sorted(set(reads)) == [0, 1]  # two epochs of two batches, read by the transform
    for number, (index, logits) in enumerate(served):
        torch.testing.assert_close(logits, teacher_logits(cache, number // 2, index))


def test_replayed_views_resample_as_the_student_does(tmp_path):
    """The student's replayed view of a cached crop uses its own resampling (`--interpolation`), as torchvision's
    resized_crop of the same box and flip gives it; the default stays bilinear."""
    images = _images(2)
    build_teacher_cache(_teacher(), images, str(tmp_path / "c"), teacher_name="t", size=SIZE, mean=MEAN, std=STD,
                        top_k=None, seed=0, progress=False)  # fmt: skip
    cache = TeacherCache(str(tmp_path / "c"))
    rows = {"img": [PILImage.fromarray(img.permute(1, 2, 0).numpy()) for img in images], "sample_index": [0, 1]}
    for mode in ("nearest", "bicubic", "bilinear"):
        replay = ReplayTransform(cache, SIZE, MEAN, STD, "img", None, interpolation=mode)
        for index, (image, got) in enumerate(zip(images, replay(rows)["pixel_values"])):
            (top, left, height, width), flip = cache.view(0, index)
            resample = TF.InterpolationMode(mode)
            view = TF.resized_crop(image, top, left, height, width, list(SIZE), resample, antialias=True)
            view = TF.horizontal_flip(view) if flip else view
            torch.testing.assert_close(got, TF.normalize(view.float() / 255, list(MEAN), list(STD)), rtol=0, atol=0)
    default = ReplayTransform(cache, SIZE, MEAN, STD, "img", None)(rows)["pixel_values"]
    torch.testing.assert_close(default, replay(rows)["pixel_values"], rtol=0, atol=0)


def test_feature_losses_refuse_the_cache(tmp_path):
    with pytest.raises(ValueError, match=r"'at' needs feature maps.*stores logits only"):
        DistillationArguments(output_dir=str(tmp_path), distill_loss="at", teacher_cache_dir=str(tmp_path))


def test_cache_command_then_training_without_the_teacher(tmp_path, monkeypatch):
    from hfkd.commands import cache as teacher_cache

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("validation", 2)):
        for name in ("a", "b", "c", "d", "e"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
                PILImage.fromarray(image).save(tmp_path / "data" / split / name / f"{i}.png")
    teacher = _teacher()
    teacher.save_pretrained(tmp_path / "teacher")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "teacher")
    student = tiny_resnet(5, seed=1)
    student.save_pretrained(tmp_path / "student")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "student")
    teacher_cache.main(["--teacher", str(tmp_path / "teacher"), "--dataset", str(tmp_path / "data"),
                        "--output_dir", str(tmp_path / "cache"), "--epochs", "2", "--top_k", "3"])  # fmt: skip
    config = json.loads((tmp_path / "cache" / "cache_config.json").read_text())
    assert config["num_samples"] == 20 and config["top_k"] == 3 and config["epochs"] == 2
    with pytest.raises(ValueError, match="already holds a teacher cache"):
        teacher_cache.main(["--teacher", str(tmp_path / "teacher"), "--dataset", str(tmp_path / "data"),
                            "--output_dir", str(tmp_path / "cache")])  # fmt: skip

    calls = []
    monkeypatch.setattr("hfkd.teachers.live.load_teacher", lambda *a, **k: calls.append(a))
    metrics = run_image_distill.main([
        "--dataset", str(tmp_path / "data"), "--student", str(tmp_path / "student"), "--loss", "kd",
        "--teacher_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run"), "--max_steps", "6",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        "--logging_steps", "1", "--disable_tqdm", "true",
    ])  # fmt: skip
    assert calls == [] and 0.0 <= metrics["eval_accuracy"] <= 1.0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    logged = [e for e in state["log_history"] if "distill/kd" in e]
    assert len(logged) == 6 and all(np.isfinite(e["distill/kd"]) for e in logged)
    assert json.loads((tmp_path / "run" / "distill_config.json").read_text())["teacher"]["top_k"] == 3
