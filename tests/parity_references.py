"""Hand-written training loops of the reference code, for `tests/test_reference_parity.py`.

Each reference is written here from reading its training code (never imported, never copied): its optimiser and
parameter groups, its learning-rate rule, its loss weights, no gradient clipping. The constants are the reference's
own (its config files and argparse defaults), not the recipe's, so a recipe that drifts from its reference fails.

- MDistiller, megvii-research/mdistiller @ a08d46f: `mdistiller/engine/trainer.py` (SGD over
  `get_learnable_parameters()`, lines 38-48; step without clipping, lines 153-169), `distillers/_base.py:22-24` (every
  student parameter, one group), `engine/utils.py:72-79` (lr × rate ** #{stage < epoch}, 1-based epochs from
  `trainer.py:78-87`), `engine/cfg.py:39-48, 59-64, 161-167` (solver, KD and DKD defaults),
  `configs/cifar100/kd.yaml` and `configs/cifar100/dkd/res32x4_res8x4.yaml` (lr 0.05, wd 5e-4), `distillers/KD.py`
  and `distillers/DKD.py` (the losses; DKD's warm-up min(epoch / 20, 1) at `DKD.py:72`), `dataset/cifar100.py:151-153`
  (shuffled batches, the last partial one kept).
- DIST, hunto/DIST_KD @ 2418f18 -> hunto/image_classification_sota @ d9662f7: `tools/train.py` (optimiser lines
  110-118, scheduler 121-134 stepped per iteration at 317, no clipping unless `--clip-grad-norm`, 282-286),
  `lib/utils/optim.py:5-38` (one group of every parameter with `opt_no_filter`), `lib/utils/scheduler.py:7-97`
  (warm-up from `warmup_lr`, then `StepLR`), `lib/models/losses/kd_loss.py:27-57` and `dist_kd.py` (the loss),
  `configs/strategies/distill/dist_cifar.yaml` (lr 0.05, wd 5e-4, no Nesterov, 120 warm-up epochs at the lr itself,
  ×0.1 every 30 epochs, CE 1, DIST 2 at τ 4), `lib/dataset/builder.py:78-82` (shuffled full batches, drop_last);
  `configs/strategies/distill/resnet_dist.yaml` (ImageNet: Nesterov SGD, lr 0.1, no warm-up) and `dist_b2.yaml`
  (@ eda69bd: RMSpropTF, `lib/utils/optim.py:66-181`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _kl_rows(target_probs: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """Σ_c p_t (log p_t − log p_s) per row, with 0·log 0 = 0 (masked classes carry probability 0)."""
    return (torch.xlogy(target_probs, target_probs) - target_probs * student_log_probs).sum(dim=1)


# ------------------------------------------------------------------------------------------------ MDistiller


@dataclass(frozen=True)
class MDistillerSolver:
    """`configs/cifar100/{kd,dkd/res32x4_res8x4}.yaml` over the `engine/cfg.py` defaults."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_stages: tuple[int, ...] = (150, 180, 210)
    decay_rate: float = 0.1

    def lr_at(self, epoch: int) -> float:
        """`adjust_learning_rate`: the lr of 1-based `epoch`."""
        return self.lr * self.decay_rate ** sum(1 for stage in self.decay_stages if epoch > stage)


def mdistiller_kd(student_logits, teacher_logits, labels, epoch, *, temperature=4.0, ce_weight=0.1, kd_weight=0.9):
    """`distillers/KD.py`: the losses dict {loss_ce, loss_kd} with cfg.KD's weights (T 4, CE 0.1, KD 0.9)."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=1)
    kd = _kl_rows(teacher_probs, student_log_probs).mean() * temperature**2
    return {"loss_ce": ce_weight * F.cross_entropy(student_logits, labels), "loss_kd": kd_weight * kd}


def mdistiller_dkd(
    student_logits, teacher_logits, labels, epoch, *, alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0, warmup=20
):
    """`distillers/DKD.py`: {loss_ce, loss_kd} with cfg.DKD's values and the warm-up factor min(epoch / 20, 1)."""
    batch = labels.shape[0]
    target = F.one_hot(labels, student_logits.shape[1]).bool()

    def binary(logits: torch.Tensor) -> torch.Tensor:  # [p(target), p(every other class)]
        probs = F.softmax(logits / temperature, dim=1)
        return torch.stack([(probs * target).sum(1), (probs * ~target).sum(1)], dim=1)

    student_binary, teacher_binary = binary(student_logits), binary(teacher_logits)
    tckd = _kl_rows(teacher_binary, torch.log(student_binary)).sum() * temperature**2 / batch
    # The target class is pushed out of both softmaxes with a −1000 logit offset.
    offset = 1000.0 * target
    teacher_other = F.softmax(teacher_logits / temperature - offset, dim=1)
    student_other = F.log_softmax(student_logits / temperature - offset, dim=1)
    nckd = _kl_rows(teacher_other, student_other).sum() * temperature**2 / batch
    factor = min(epoch / warmup, 1.0)
    return {
        "loss_ce": ce_weight * F.cross_entropy(student_logits, labels),
        "loss_kd": factor * (alpha * tckd + beta * nckd),
    }


# ------------------------------------------------------------------------------------------------------ DIST


@dataclass(frozen=True)
class DISTCifarSolver:
    """`configs/strategies/distill/dist_cifar.yaml` as `tools/train.py` builds its SGD and scheduler."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False  # sgd_no_nesterov: True
    warmup_epochs: int = 120
    warmup_lr: float = 0.05
    decay_epochs: float = 30
    decay_rate: float = 0.1

    def lr_after(self, scheduler_steps: int, steps_per_epoch: int) -> float:
        """The lr once `scheduler.step(scheduler_steps)` ran (0: as built); iteration k (1-based) trains at
        `lr_after(k - 1)`. GradualWarmupScheduler holds `warmup_lr + (lr − warmup_lr)·⌊s/spe⌋·spe / W` up to W warm-up
        iterations, then hands StepLR the count s − W − 1, which it decays every `decay_epochs · spe` iterations."""
        warmup = self.warmup_epochs * steps_per_epoch
        if warmup == 0 or scheduler_steps > warmup:
            since = scheduler_steps if warmup == 0 else scheduler_steps - warmup - 1
            return self.lr * self.decay_rate ** (since // (self.decay_epochs * steps_per_epoch))
        done = scheduler_steps // steps_per_epoch * steps_per_epoch
        return self.warmup_lr + (self.lr - self.warmup_lr) * done / warmup


@dataclass(frozen=True)
class B2Solver(DISTCifarSolver):
    """`configs/strategies/distill/dist_b2.yaml` (@ eda69bd) as `lib/utils/optim.py` builds its optimiser and
    `lib/utils/scheduler.py` its `step` schedule (3 warm-up epochs from 1e-6, then x0.97 every 2.4 epochs)."""

    lr: float = 0.048
    weight_decay: float = 1e-5
    momentum: float = 0.9
    alpha: float = 0.9
    eps: float = 1e-3
    warmup_epochs: int = 3
    warmup_lr: float = 1e-6
    decay_epochs: float = 2.4
    decay_rate: float = 0.97

    def rmsproptf_step(self, param, grad, square_avg, buffer, weight_decay):
        """One `RMSpropTF` update (`lib/utils/optim.py:117-181`, not centered, L2 decay, lr in the momentum buffer);
        updates `square_avg` and `buffer` in place and returns the new parameter."""
        grad = grad + weight_decay * param
        square_avg += (1 - self.alpha) * (grad * grad - square_avg)
        buffer.mul_(self.momentum).add_(self.lr * grad / torch.sqrt(square_avg + self.eps))
        return param - buffer


@dataclass(frozen=True)
class DISTResNetSolver(DISTCifarSolver):
    """`configs/strategies/distill/resnet_dist.yaml` (and `resnet_kdt4.yaml`): SGD 0.9 with Nesterov (the
    `--sgd-no-nesterov` default), lr 0.1 at batch 256, wd 1e-4, no warm-up, ×0.1 every 30 epochs."""

    lr: float = 0.1
    weight_decay: float = 1e-4
    nesterov: bool = True
    warmup_epochs: int = 0
    warmup_lr: float = 0.2


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_cifar(student_logits, teacher_logits, labels, epoch, *, tau=4.0, ce_weight=1.0, kd_weight=2.0):
    """`KDLoss` with `kd: dist_t4` (β = γ = 1): CE·1 + 2·τ²·(inter + intra), inter over samples, intra over classes."""
    student_probs = F.softmax(student_logits / tau, dim=1)
    teacher_probs = F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - _pearson_rows(student_probs, teacher_probs).mean()
    intra = 1 - _pearson_rows(student_probs.t(), teacher_probs.t()).mean()
    return {
        "loss_ce": ce_weight * F.cross_entropy(student_logits, labels),
        "loss_kd": kd_weight * tau**2 * (inter + intra),
    }


# ------------------------------------------------------------------------------------------------ the step


@dataclass
class ReferenceStep:
    """One reference iteration: the lr it trained at, its loss terms, and after the step the student's state
    (parameters and BatchNorm buffers) and the SGD momentum buffers, by parameter name."""

    lr: float
    terms: dict[str, float]
    state: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]


class ReferenceSGDLoop:
    """Both references' iteration: SGD over every student parameter in one group (their optimisers), the lr set
    before the step, the teacher in eval mode under no_grad, loss = Σ terms, backward, step; no clipping.

    `step` can start from given weights, buffers and momentum (a state the script reached), so that a comparison
    checks each update on its own instead of letting float noise compound over steps.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss_terms: Callable[..., dict[str, torch.Tensor]],
        *,
        momentum: float,
        weight_decay: float,
        nesterov: bool = False,
    ) -> None:
        self.student, self.teacher, self.loss_terms = student, teacher.eval(), loss_terms
        self.params = dict(student.named_parameters())
        self.optimizer = torch.optim.SGD(
            self.params.values(), lr=0.0, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )

    def step(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        *,
        lr: float,
        epoch: int,
        state: dict[str, torch.Tensor] | None = None,
        momentum: dict[str, torch.Tensor] | None = None,
    ) -> ReferenceStep:
        if state is not None:
            self.student.load_state_dict(state)
        if momentum is not None:
            for name, buffer in momentum.items():
                self.optimizer.state[self.params[name]]["momentum_buffer"] = buffer.clone()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.student.train()
        self.optimizer.zero_grad()
        logits = self.student(pixels)
        with torch.no_grad():
            teacher_logits = self.teacher(pixels)
        terms = self.loss_terms(logits, teacher_logits, labels, epoch)
        sum(terms.values()).backward()
        self.optimizer.step()
        return ReferenceStep(
            lr=lr,
            terms={name: value.item() for name, value in terms.items()},
            state={name: value.detach().clone() for name, value in self.student.state_dict().items()},
            momentum={
                name: self.optimizer.state[param]["momentum_buffer"].clone() for name, param in self.params.items()
            },
        )


def loader_batch_sizes(num_samples: int, batch_size: int, steps: int, *, drop_last: bool) -> list[int]:
    """The batch sizes a shuffled `DataLoader` yields over `steps` iterations, epoch after epoch."""
    full, rest = divmod(num_samples, batch_size)
    epoch = [batch_size] * full + ([rest] if rest and not drop_last else [])
    return [epoch[k % len(epoch)] for k in range(steps)]


def steps_per_epoch(num_samples: int, batch_size: int, *, drop_last: bool) -> int:
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
