"""Run by tests/distributed/test_segmentation_two_processes.py under `accelerate launch`, and by it in one process:
two steps of per-pixel distillation (LOSS) of a BatchNorm-free tiny SegFormer on 4 images; each rank (or the single
process) writes its final weights.
Usage: segmentation_two_ranks.py OUTPUT_DIR TEACHER_DIR STUDENT_DIR LOSS PER_DEVICE_BATCH."""

import json
import os
import sys

import torch
from datasets import Dataset
from torch import nn
from transformers import SegformerForSemanticSegmentation

from hfkd import DistillationArguments, DistillationTrainer


def data() -> Dataset:
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(4, 3, 32, 32, generator=g)
    labels = torch.randint(0, 5, (4, 32, 32), generator=g)  # no ignored pixel: every rank averages as many
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()}).with_format("torch")


def collate(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
        "labels": torch.stack([e["labels"] for e in examples]).long(),
    }


def batch_norm_free(folder: str) -> SegformerForSemanticSegmentation:
    """The decode head's BatchNorm averages over the process's batch; without it the step decomposes over ranks."""
    model = SegformerForSemanticSegmentation.from_pretrained(folder)
    model.decode_head.batch_norm = nn.Identity()
    return model


def run(output_dir: str, teacher_dir: str, student_dir: str, loss: str, per_device: int) -> DistillationTrainer:
    args = DistillationArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=per_device, max_steps=2,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        distill_loss=loss, distill_ce_weight=0.3, distill_weight=0.7, disable_tqdm=True, seed=0,
    )  # fmt: skip
    teacher = batch_norm_free(teacher_dir)
    trainer = DistillationTrainer(
        model=batch_norm_free(student_dir), teacher_model=teacher, args=args, train_dataset=data(),
        data_collator=collate,
    )  # fmt: skip
    trainer.train()
    return trainer


def main() -> None:
    output_dir, teacher_dir, student_dir, loss, per_device = sys.argv[1:6]
    trainer = run(output_dir, teacher_dir, student_dir, loss, int(per_device))
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "task": trainer.task.name,
        "state": {k: v.tolist() for k, v in trainer.student.state_dict().items()},
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
