"""Shared trainable blocks of the feature losses, built from the feature shapes the trainer probes.

Everything a loss trains or keeps (weights, BatchNorm statistics, memory banks) is a registered parameter or buffer
with a shape fixed by the `LossContext`, so the optimizer, DDP and `distill_adapters.safetensors` cover it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hfkd.losses._feature_maps import StageSpec, as_feature_map, resolve_stages
from hfkd.losses.base import LossContext
from hfkd.utils.errors import UsageError

Shape = tuple[int, ...]


def require_feature_shapes(context: LossContext | None, key: str) -> tuple[list[Shape], list[Shape]]:
    """The probed (C, H, W) shapes of both models, or a ValueError that says where they come from."""
    if context is None or not context.student_feature_shapes or not context.teacher_feature_shapes:
        raise UsageError(
            f"{key}: this loss needs feature shapes; the trainer probes them on a training batch before training. "
            "To build it by hand, pass `context=LossContext(student_feature_shapes=probe_feature_shapes(student, "
            "pixel_values), teacher_feature_shapes=probe_feature_shapes(teacher, pixel_values))` "
            "(`hfkd.features.probe_feature_shapes`)."
        )
    return [tuple(s) for s in context.student_feature_shapes], [tuple(s) for s in context.teacher_feature_shapes]


def resolve_stage_pairs(
    key: str, stages: StageSpec, teacher_stages: StageSpec, student_count: int, teacher_count: int
) -> tuple[list[int], list[int]]:
    """Student and teacher stage indices (the teacher's default to the student's), equally many."""
    student = resolve_stages(stages, student_count)
    teacher = resolve_stages(stages if teacher_stages is None else teacher_stages, teacher_count)
    if len(student) != len(teacher):
        raise UsageError(
            f"{key}: stages {student} of the student and {teacher} of the teacher differ in number; pass "
            "`teacher_stages` with one teacher stage per student stage."
        )
    return student, teacher


def pick_maps(maps: Sequence[torch.Tensor], indices: list[int], expected: int, key: str, who: str) -> list:
    """`maps[i]` for the stage indices, after checking the model still reports the probed number of maps."""
    if len(maps) != expected:
        raise UsageError(
            f"{key}: the {who} reports {len(maps)} feature maps but {expected} were probed when the loss was built; "
            "build the loss for the models it is used with."
        )
    return [maps[i] for i in indices]


def preact_feature_maps(output: Any) -> list[torch.Tensor] | None:
    """`preact_hidden_states` of an output (attribute or key) as (B, C, H, W) maps, or None when absent."""
    states = output.get("preact_hidden_states") if isinstance(output, dict) else None
    if states is None:
        states = getattr(output, "preact_hidden_states", None)
    return None if states is None else [as_feature_map(s) for s in states]


class ConvReg(nn.Module):
    """FitNet's regressor, conv + BN + ReLU, with mdistiller's kernel rules on (C, H, W) shapes.

    3×3 stride-2 conv when the student map is twice the teacher's size, 4×4 stride-2 transposed conv when it is
    half, a (1 + s_H − t_H)×(1 + s_W − t_W) conv when it is at least as large. mdistiller tests the rules on the
    height alone (its maps are square) and refuses anything else; here they must hold for both sides, and any other
    pair of sizes (a student smaller than the teacher but not half, e.g. 22 vs 28 when the two models see different
    input sizes) is bilinearly resized to the teacher's size before a 3×3 conv, as torchdistill's regressors do.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape, use_relu: bool = True) -> None:
        super().__init__()
        (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
        self.resize: tuple[int, int] | None = None
        if (s_h, s_w) == (2 * t_h, 2 * t_w):
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif (2 * s_h, 2 * s_w) == (t_h, t_w):
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.resize = (t_h, t_w)
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def conv_bn_connector(in_channels: int, out_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """OFD's connector: bias-free conv + BN, initialised as mdistiller does (He-normal over fan-out, BN 1/0)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


def vid_regressor(in_channels: int, out_channels: int) -> nn.Sequential:
    """VID's mean predictor: conv1×1–ReLU–conv1×1–ReLU–conv1×1, bias-free, mid width = teacher channels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 1, bias=False),
    )


class EmbedHead(nn.Module):
    """CRD's embedding: flatten, linear to `out_dim`, L2-normalise (in float32, or float64 for float64 input)."""

    def __init__(self, in_dim: int, out_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return F.normalize(x.double() if x.dtype == torch.float64 else x.float(), dim=1)


class ABF(nn.Module):
    """ReviewKD's attention-based fusion: 1×1 conv + BN, optional attention over [own, residual], 3×3 conv + BN."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at `out_size` for the loss, fused map passed on as the next, shallower stage's residual)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            weights = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * weights[:, 0:1] + residual * weights[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor's rows over all processes (uneven batch sizes allowed); a no-op without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return tensors
    world = dist.get_world_size()
    count = torch.tensor([tensors[0].shape[0]], device=tensors[0].device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(gathered)


class ContrastMemory(nn.Module):
    """CRD's two memory banks (student and teacher embeddings per dataset index) and their normalisers Z.

    Buffers: `student` and `teacher` (N × dim, mdistiller's uniform init in ±1/√(dim/3)), `normalizer` (Z for the
    student-anchored and the teacher-anchored scores, −1 until the first batch sets them). Under DDP the updates of
    all processes are gathered and applied on every process, so the banks stay identical across ranks.
    """

    def __init__(self, dim: int, size: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student", torch.rand(size, dim) * 2 * bound - bound)
        self.register_buffer("teacher", torch.rand(size, dim) * 2 * bound - bound)
        self.register_buffer("normalizer", torch.full((2,), -1.0))

    def sample(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k + 1) indices: the sample itself, then k uniform draws among the other N − 1 samples."""
        draws = torch.randint(0, self.student.shape[0] - 1, (index.shape[0], k), device=index.device)
        negatives = draws + (draws >= index.unsqueeze(1)).long()
        return torch.cat([index.unsqueeze(1), negatives], dim=1)

    @torch.no_grad()
    def normalizers(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        """Z = mean score × N from the first batch (mdistiller), then fixed; no host sync."""
        candidate = torch.stack([student_scores.mean(), teacher_scores.mean()]).to(self.normalizer) * len(self.student)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(candidate)
            candidate /= dist.get_world_size()
        self.normalizer.copy_(torch.where(self.normalizer < 0, candidate, self.normalizer))
        return self.normalizer.clone()

    @torch.no_grad()
    def update(self, index: torch.Tensor, student_embed: torch.Tensor, teacher_embed: torch.Tensor) -> None:
        """m ← normalise(momentum · m + (1 − momentum) · v) at the batch's indices, for both banks."""
        index, student_embed, teacher_embed = _gather_rows(index, student_embed, teacher_embed)
        for bank, embed in ((self.student, student_embed), (self.teacher, teacher_embed)):
            rows = bank.index_select(0, index) * self.momentum + embed.to(bank.dtype) * (1 - self.momentum)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))
