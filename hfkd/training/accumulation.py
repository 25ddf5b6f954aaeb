"""Exact gradient accumulation: an optimiser step over several micro-batches (and processes) takes the gradient of
the loss of their union, whatever each micro-batch holds.

The loss of a step is `distill_ce_weight · CE + distill_weight · L`, where CE (the task loss) averages over the
step's labelled samples (segmentation: its labelled pixels) and L over all of its samples. Each micro-batch's loss is
a mean over its own samples, so its CE weighs `labelled in the micro-batch / labelled in the step` and its L
`samples in the micro-batch / samples in the step`,
not `1 / gradient_accumulation_steps`: that would weigh a micro-batch with fewer labels (`--labelled_samples`) or a
short last one as much as a full one. With `average_tokens_across_devices` (the default), the counts are summed over
the processes, as the Trainer counts tokens, and each process's loss is multiplied by their number, which the
averaging of gradients across processes divides out again.

`count_step` counts when the Trainer fetches a step's micro-batches (`get_batch_samples`), on the device and without
reading a value back; `StepCounts.shares` gives a micro-batch's two weights. Losses over the batch as a whole (DIST's
intra-class term, RKD, CRD) stay batch-size dependent by design.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hfkd.data.batch import LABELS, PIXEL_VALUES


def batch_size(batch: dict[str, Any]) -> int:
    """The number of samples in `batch`."""
    return len(batch[PIXEL_VALUES] if PIXEL_VALUES in batch else batch[LABELS])


Counter = Callable[[Any, int], "torch.Tensor | int"]
"""What a micro-batch's task loss averages over, from its labels and size (`hfkd.tasks.base.Task.count_labelled`):
classification's labelled samples, segmentation's labelled pixels."""


@dataclass(frozen=True)
class StepCounts:
    """What one optimiser step's micro-batches hold in all: `labelled` samples and `samples` (tensors on the device),
    summed over `processes` processes (1: this process's alone)."""

    labelled: torch.Tensor
    samples: torch.Tensor
    processes: int = 1
    counter: Counter | None = None

    def shares(self, labels: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of a micro-batch of `size` samples with `labels`: of its task-loss mean and of its loss mean."""
        labelled = self.counter(labels, size)
        return labelled * self.processes / self.labelled.clamp_min(1), size * self.processes / self.samples


def count_step(
    batches: list[dict[str, Any]], accelerator: Any, *, counter: Counter, all_labelled: bool, across_processes: bool
) -> StepCounts | None:
    """The `StepCounts` of a step's micro-batches, their labels counted by `counter` as they come from the data
    (`all_labelled`: every sample, when the trainer turns the labels into soft targets), summed over the processes
    when `across_processes`."""
    if not batches:
        return None
    device = batches[0][PIXEL_VALUES].device if PIXEL_VALUES in batches[0] else accelerator.device
    sizes = [batch_size(batch) for batch in batches]
    labelled = sum(n if all_labelled else counter(b.get(LABELS), n) for b, n in zip(batches, sizes))
    # torch.full, not torch.tensor: a copy from the host would wait for the device to finish its queued work.
    counts = torch.stack([
        labelled.float() if torch.is_tensor(labelled) else torch.full((), float(labelled), device=device),
        torch.full((), float(sum(sizes)), device=device),
    ])  # fmt: skip
    processes = 1
    if across_processes and accelerator.num_processes > 1:
        counts = accelerator.gather(counts[None]).sum(0)
        processes = accelerator.num_processes
    return StepCounts(labelled=counts[0], samples=counts[1], processes=processes, counter=counter)
