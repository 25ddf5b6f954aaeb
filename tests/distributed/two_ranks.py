"""Run by tests/distributed/test_two_processes.py under `accelerate launch`: two KD steps on 4 samples, one of them
labelled (so that at every step one rank has a label and the other none), with an EMA of the student; then each rank
writes what it saw, its live weights and its average.
Usage: two_ranks.py OUTPUT_DIR TEACHER_DIR STUDENT_DIR."""

import json
import os
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForImageClassification

from hfkd import DistillationArguments, DistillationTrainer

LABELS = [2, -1, -1, -1]  # -1: unlabelled (`--labelled_samples`)


def collate(examples):
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float(),
        "labels": torch.tensor([int(e["labels"]) for e in examples]),
    }


def main() -> None:
    output_dir, teacher_dir, student_dir = sys.argv[1:4]
    g = torch.Generator().manual_seed(3)
    data = Dataset.from_dict(
        {"pixel_values": torch.randn(4, 3, 32, 32, generator=g).numpy(), "labels": LABELS}
    ).with_format("torch")
    student = AutoModelForImageClassification.from_pretrained(student_dir)
    args = DistillationArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=2, max_steps=2,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        distill_loss="kd", distill_ce_weight=0.3, distill_weight=0.7, disable_tqdm=True, seed=0, distill_ema=True,
        distill_ema_decay=0.5,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher_dir, args=args, train_dataset=data, data_collator=collate
    )
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **kw):
        seen.append(inputs["labels"].tolist())
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    trainer.save_model()
    trainer.create_model_card()
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "labels_seen": seen,
        "logged": [e for e in trainer.state.log_history if "distill/kd" in e],
        "state": {k: v.tolist() for k, v in student.state_dict().items()},
        "ema": {k: v.tolist() for k, v in trainer.ema.state_dict().items()},
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
