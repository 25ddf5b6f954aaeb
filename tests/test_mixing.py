"""Mixup and CutMix (`--mixup`, `--cutmix`): the same images and targets as timm's `Mixup` on the same draws, the
teacher and the student fed the same mix, soft-target CE as timm's, resumable draws, and the refusals."""

import numpy as np
import pytest
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.data.mixing import BatchMixer

from .testing_utils import perturbed, tiny_resnet

NUM_CLASSES = 5


def _batch(seed: int = 0, size: int = 16, batch: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 3, size, size, generator=g),
        "labels": torch.randint(0, NUM_CLASSES, (batch,), generator=g),
    }


def _timm_on_our_draws(monkeypatch, mixer: BatchMixer, batch: dict, step: int, micro: int) -> tuple:
    """timm's Mixup on `batch`, its NumPy draws served from the generator BatchMixer seeds for (step, micro)."""
    rng = np.random.default_rng([mixer.seed, step, micro, mixer.process_index])
    monkeypatch.setattr(np.random, "rand", lambda: rng.random())
    monkeypatch.setattr(np.random, "beta", lambda a, b: rng.beta(a, b))
    monkeypatch.setattr(np.random, "randint", lambda low, high, size=None: rng.integers(low, high))
    timm_mixup = Mixup(
        mixup_alpha=mixer.mixup_alpha, cutmix_alpha=mixer.cutmix_alpha, prob=mixer.prob,
        switch_prob=mixer.switch_prob, label_smoothing=mixer.smoothing, num_classes=NUM_CLASSES,
    )  # fmt: skip
    return timm_mixup(batch["pixel_values"].clone(), batch["labels"].clone())


@pytest.mark.parametrize(
    "mixup, cutmix, prob", [(0.8, 0.0, 1.0), (0.0, 1.0, 1.0), (0.8, 1.0, 1.0), (0.8, 1.0, 0.5)]
)
def test_images_and_targets_are_timms_on_the_same_draws(monkeypatch, mixup, cutmix, prob):
    mixer = BatchMixer(mixup, cutmix, NUM_CLASSES, smoothing=0.1, seed=3, prob=prob)
    kinds = set()
    for step in range(12):
        batch = _batch(step)
        ours = mixer(batch, step)
        images, targets = _timm_on_our_draws(monkeypatch, mixer, batch, step, 0)
        torch.testing.assert_close(ours["pixel_values"], images, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours["labels"], targets, rtol=0, atol=1e-6)
        mixed = not torch.equal(ours["pixel_values"], batch["pixel_values"])
        blended = mixed and not (ours["pixel_values"] == batch["pixel_values"]).any()
        kinds.add("none" if not mixed else "mixup" if blended else "cutmix")
        assert torch.allclose(ours["labels"].sum(-1), torch.ones(6))  # still distributions
    expected = {"mixup"} if not cutmix else {"cutmix"} if not mixup else {"mixup", "cutmix"}
    # A CutMix box can be empty (λ near 1: no pixel moves), and with prob < 1 some batches are left alone.
    assert expected <= kinds <= expected | {"none"} and ("none" in kinds or prob == 1)


def test_draws_depend_on_the_step_and_micro_batch_only():
    batch = _batch()
    first = BatchMixer(0.8, 1.0, NUM_CLASSES, 0.0, seed=0)
    outputs = [first(batch, step)["labels"] for step in (0, 0, 1)]  # step 0 twice: two micro-batches
    resumed = BatchMixer(0.8, 1.0, NUM_CLASSES, 0.0, seed=0)  # a restarted run, at step 1
    torch.testing.assert_close(resumed(batch, 1)["labels"], outputs[2], rtol=0, atol=0)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    other_process = BatchMixer(0.8, 1.0, NUM_CLASSES, 0.0, seed=0, process_index=1)
    assert not torch.equal(other_process(batch, 1)["labels"], outputs[2])


def test_a_teachers_own_pixels_get_the_same_region():
    batch = {**_batch(size=16), "teacher_pixel_values": torch.randn(6, 3, 32, 32)}
    mixer = BatchMixer(0.0, 1.0, NUM_CLASSES, 0.0, seed=1)
    out = mixer(batch, 0)
    changed = (out["pixel_values"] != batch["pixel_values"]).any(1)[0]  # the student's (16, 16) box
    changed_teacher = (out["teacher_pixel_values"] != batch["teacher_pixel_values"]).any(1)[0]
    rows, cols = changed.nonzero().T
    t_rows, t_cols = changed_teacher.nonzero().T
    assert (t_rows.min(), t_rows.max() + 1, t_cols.min(), t_cols.max() + 1) == (
        2 * rows.min(), 2 * (rows.max() + 1), 2 * cols.min(), 2 * (cols.max() + 1)
    )


def test_the_trainer_feeds_teacher_and_student_the_same_mix_with_soft_target_ce(tmp_path):
    batch = _batch(size=32, batch=4)
    teacher = perturbed(tiny_resnet(NUM_CLASSES, wide=True, seed=2).eval(), seed=5)
    seen = []
    teacher.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True)
    mixing = {"distill_mixup": 0.8, "distill_cutmix": 1.0, "label_smoothing_factor": 0.1, "seed": 4}
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, distill_loss="kd", **mixing)
    trainer = DistillationTrainer(model=tiny_resnet(NUM_CLASSES, seed=1), teacher_model=teacher, args=args)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    mixed = BatchMixer(0.8, 1.0, NUM_CLASSES, 0.1, seed=4)(batch, 0)
    torch.testing.assert_close(seen[-1], mixed["pixel_values"], rtol=0, atol=0)
    # The same step without the mixer, on the mixed batch: KD on the mixed images plus timm's soft-target CE.
    plain = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, distill_loss="kd")
    reference = DistillationTrainer(model=tiny_resnet(NUM_CLASSES, seed=1), teacher_model=teacher, args=plain)
    reference.model.train()
    torch.testing.assert_close(loss, reference.compute_loss(reference.model, mixed))
    student_logits = reference.student(pixel_values=mixed["pixel_values"]).logits
    torch.testing.assert_close(
        reference._cross_entropy(student_logits, mixed["labels"]),
        SoftTargetCrossEntropy()(student_logits, mixed["labels"]),
    )
    trainer.model.eval()  # evaluation never mixes
    eval_loss = trainer.compute_loss(trainer.model, dict(batch))
    expected = torch.nn.functional.cross_entropy(
        trainer.student(pixel_values=batch["pixel_values"]).logits, batch["labels"], label_smoothing=0.1
    )
    torch.testing.assert_close(eval_loss, expected)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"distill_loss": "dkd"}, "reads the class labels"),
        ({"distill_loss": "mlkd"}, "strongly augmented view"),
        ({"distill_loss": "crd"}, "each sample's index"),
        ({"distill_loss": "kd", "teacher_cache_dir": "cache"}, "teacher cache"),
        ({"distill_loss": "kd", "distill_mixup": -1.0}, "Beta alpha >= 0"),
    ],
)
def test_what_mixing_cannot_serve_is_refused_by_name(tmp_path, extra, needle):
    with pytest.raises(ValueError, match=needle):
        DistillationArguments(output_dir=str(tmp_path), report_to="none", **{"distill_mixup": 0.8, **extra})
