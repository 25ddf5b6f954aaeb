"""CTKD: Li et al., curriculum temperature for knowledge distillation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hfkd.losses.base import DistillationLoss, DistillBatch, PaperRef, check_non_negative, check_positive, logits_of
from hfkd.losses.kd import kd_loss
from hfkd.losses.registry import register_loss


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by `scale` (negative: gradient reversal)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaleGradient.apply(x, scale)


def cosine_lambda(epoch: float, decay_epochs: float, lambda_max: float = 1.0) -> float:
    """λ(e) = −λ_max + λ_max·(1 + cos(π·min(e, E)/E))/2: 0 at the start, −λ_max after E epochs."""
    if decay_epochs == 0:
        return -lambda_max
    progress = min(epoch, decay_epochs) / decay_epochs
    return -lambda_max + lambda_max * (1 + math.cos(math.pi * progress)) / 2


@register_loss("ctkd")
class CTKDLoss(DistillationLoss):
    """KD with a learnable temperature trained adversarially, its difficulty raised by a cosine curriculum.

    Paper: Li, Li, Yang, Zhang, Wang, Tang, Yang, Yang, *Curriculum Temperature for Knowledge Distillation*,
    AAAI 2023, arXiv:2211.16231

    Objective: T = `t_start` + `t_end`·σ(GRL_λ(θ)) with one learnable scalar θ (initialised to `init_theta`, so
    T₀ = 15.62 with the defaults), and L = T²·KL(softmax(t/T) ‖ softmax(s/T)) as in KD. The gradient-reversal
    layer multiplies θ's gradient by λ ≤ 0, so θ ascends the loss the student descends (a harder temperature over
    time); λ(e) = −`lambda_max` + `lambda_max`·(1 + cos(π·min(e, E)/E))/2 with E = `decay_epochs`. As in the
    reference loops, e is the 1-based epoch: ⌊epoch⌋ + 1 of the trainer's 0-based fractional epoch. The reference
    CIFAR script uses CE weight 0.1 and KD weight 0.9 (`distill_ce_weight=0.1`, `distill_weight=0.9`), SGD lr
    0.05, 240 epochs. θ is a parameter of this loss, so the trainer trains it with the student and saves it in
    `distill_adapters.safetensors`. The instance-wise variant exists in the paper's README only and is not here.

    Args:
        t_start (`float`, *optional*, defaults to `1.0`): Lower bound of the temperature.
        t_end (`float`, *optional*, defaults to `20.0`): Range of the temperature: T ∈ (t_start, t_start + t_end).
        init_theta (`float`, *optional*, defaults to `1.0`): Initial value of θ.
        decay_epochs (`float`, *optional*, defaults to `10.0`): Epochs over which λ goes from 0 to −lambda_max.
        lambda_max (`float`, *optional*, defaults to `1.0`): Final strength of the gradient reversal.

    Returns:
        `dict` with `loss`, `kd` (the same value), `temperature` and `lambda`.
    """

    paper = PaperRef(
        title="Curriculum Temperature for Knowledge Distillation",
        authors="Zheng Li, Xiang Li, Lingfeng Yang, Borui Zhao, Renjie Song, Lei Luo, Jun Li, Jian Yang",
        venue="AAAI 2023",
        arxiv_id="2211.16231",
        bibtex=(
            "@inproceedings{li2023ctkd,\n"
            "  title={Curriculum Temperature for Knowledge Distillation},\n"
            "  author={Li, Zheng and Li, Xiang and Yang, Lingfeng and Zhao, Borui and Song, Renjie and Luo, Lei "
            "and Li, Jun and Yang, Jian},\n"
            "  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},\n"
            "  year={2023}\n"
            "}"
        ),
    )

    def __init__(
        self,
        *,
        t_start: float = 1.0,
        t_end: float = 20.0,
        init_theta: float = 1.0,
        decay_epochs: float = 10.0,
        lambda_max: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive("t_start", t_start, "ctkd")
        check_positive("t_end", t_end, "ctkd")
        check_non_negative("decay_epochs", decay_epochs, "ctkd")
        check_non_negative("lambda_max", lambda_max, "ctkd")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.decay_epochs, self.lambda_max = float(decay_epochs), float(lambda_max)
        self.theta = nn.Parameter(torch.tensor(float(init_theta)))

    def temperature(self, scale: float = 1.0) -> torch.Tensor:
        return self.t_start + self.t_end * torch.sigmoid(scale_gradient(self.theta, scale))

    def forward(self, student: Any, teacher: Any, batch: DistillBatch) -> dict[str, torch.Tensor]:
        strength = cosine_lambda(math.floor(batch.epoch) + 1, self.decay_epochs, self.lambda_max)
        temperature = self.temperature(strength)
        loss = kd_loss(logits_of(student), logits_of(teacher), temperature=temperature)
        return {
            "loss": loss,
            "kd": loss.detach(),
            "temperature": temperature.detach(),
            "lambda": torch.tensor(strength, dtype=loss.dtype, device=loss.device),
        }
