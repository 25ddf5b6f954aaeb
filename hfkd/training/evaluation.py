"""Evaluation for `DistillationTrainer`: every image scored, and the teacher's accuracy under keys of its own.

A mixin of `hfkd.training.trainer.DistillationTrainer`:

- evaluation and prediction score every image of their set, whatever the training loader drops: the CIFAR recipes
  set `dataloader_drop_last` (the references drop the last partial training batch), which the Trainer would apply to
  its evaluation loader too, scoring 9,984 of CIFAR-100's 10,000 test images where the references score all;
- `evaluate_teacher`: the teacher's metrics on the evaluation set (the task's: accuracy, mean IoU, ...).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import EvalPrediction

from hfkd.data.batch import LABELS
from hfkd.utils.errors import UsageError


class EvaluationMixin:
    """The evaluation overrides of `DistillationTrainer` (see the module docstring)."""

    @contextlib.contextmanager
    def _keeping_every_batch(self) -> Iterator[None]:
        """Build a loader inside the block without dropping a last partial batch (the Trainer reads
        `dataloader_drop_last` for every loader it builds)."""
        drop_last, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
        try:
            yield
        finally:
            self.args.dataloader_drop_last = drop_last

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """`Trainer.get_eval_dataloader`, keeping the last partial batch whatever `dataloader_drop_last` says."""
        with self._keeping_every_batch():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        """`Trainer.get_test_dataloader`, keeping the last partial batch whatever `dataloader_drop_last` says."""
        with self._keeping_every_batch():
            return super().get_test_dataloader(test_dataset)

    @torch.no_grad()
    def evaluate_teacher(self, eval_dataset: Any = None, metric_key_prefix: str = "teacher_eval") -> dict[str, float]:
        """The task's metrics of the teacher on the evaluation set (its own pixel tensor when it has one: top-1/top-5
        accuracy, mean IoU, k-NN top-1, ...), under keys of their own (`teacher_eval_accuracy`, ...), so that no
        metrics file can mistake them for the student's; none (`{}`) on an evaluation set without labels. For a
        teacher ensemble these are the ensemble's, and each member's follow as
        `teacher_eval_member_<i>_...`. Each batch is reduced as the student's are (`Task.reduce`).
        """
        if self.teacher is None:
            raise UsageError("There is no teacher to evaluate (distill_loss='ce').")
        dataloader = self.get_eval_dataloader(eval_dataset)
        predictions: defaultdict[str, list[torch.Tensor]] = defaultdict(list)
        references = []
        for inputs in tqdm(dataloader, desc="Teacher evaluation", disable=not self.is_local_process_zero()):
            if inputs.get(LABELS) is None:  # a label-free run's unlabelled evaluation split: its loss is the student's
                return {}
            inputs = self._channels_last(send_to_device(inputs, self.args.device))
            reduced = {
                key: self.task.reduce(value, inputs[LABELS])
                for key, value in self.task.teacher_predictions(self.teacher, inputs).items()
            }
            # Rows of their own per image (a detector's boxes) differ in number across processes: padded as the
            # Trainer's evaluation loop pads them, then gathered.
            reduced = self.accelerator.pad_across_processes(reduced, dim=1, pad_index=-100)
            reduced = self.accelerator.gather_for_metrics(reduced)
            for key, (prediction, _) in reduced.items():
                predictions[key].append(prediction.cpu())
            references.append(next(iter(reduced.values()))[1].cpu())
        if not references:
            raise UsageError("The evaluation set is empty: there is nothing to evaluate the teacher on.")
        label_ids = _cat_rows(references).numpy()
        metrics = {}
        for key, parts in predictions.items():
            result = self.task.metrics()(EvalPrediction(_cat_rows(parts).numpy(), label_ids))
            metrics.update({f"{metric_key_prefix}_{key}{name}": value for name, value in result.items()})
        return metrics

    def latest_eval_metrics(self) -> dict[str, float] | None:
        """The most recent logged evaluation metrics (`eval_accuracy`, `eval_mean_iou`, ...), if any."""
        key = f"eval_{self.task.metric}"
        for entry in reversed(self.state.log_history):
            if key in entry:
                return entry
        return None


def _cat_rows(parts: list[torch.Tensor], padding: float = -100) -> torch.Tensor:
    """The batches' reduced tensors one after the other; those with rows of their own (a detector's boxes per image,
    as many as the batch's most) padded with `padding` to the longest, as the Trainer's evaluation loop pads them."""
    if parts and parts[0].dim() > 1 and len({p.shape[1] for p in parts}) > 1:
        longest = max(p.shape[1] for p in parts)
        pad = [p.new_full((p.shape[0], longest - p.shape[1], *p.shape[2:]), padding) for p in parts]
        parts = [torch.cat([p, q], 1) for p, q in zip(parts, pad)]
    return torch.cat(parts)
