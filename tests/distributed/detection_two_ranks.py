"""Run by tests/distributed/test_detection_two_processes.py under `accelerate launch`: two steps of DETR distillation
(KD on matched queries) over two processes, then the student's and the teacher's evaluation; each rank writes its
final weights, its metrics and how many images the metrics scored.
Usage: detection_two_ranks.py OUTPUT_DIR TEACHER_DIR STUDENT_DIR."""

import json
import os
import sys

from transformers import DetrForObjectDetection

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.tasks.detection import metrics as detection_metrics

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detection.test_distill import collate, scenes  # noqa: E402

SCORED = []


def counting(table_metrics):
    """The task's metrics, recording how many images each call scored (every image once, whatever the ranks)."""

    def wrapped(id2label=None):
        compute = table_metrics(id2label)

        def counted(eval_prediction):
            SCORED.append(len(eval_prediction.predictions))
            return compute(eval_prediction)

        return counted

    return wrapped


def main() -> None:
    output_dir, teacher_dir, student_dir = sys.argv[1:4]
    detection_metrics.table_metrics = counting(detection_metrics.table_metrics)
    args = DistillationArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        distill_loss="kd", disable_tqdm=True, seed=0, remove_unused_columns=False,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=DetrForObjectDetection.from_pretrained(student_dir),
        teacher_model=DetrForObjectDetection.from_pretrained(teacher_dir), args=args, train_dataset=scenes(8),
        eval_dataset=scenes(7, seed=1), data_collator=collate,
    )  # fmt: skip
    trainer.train()
    metrics = {**trainer.evaluate(), **trainer.evaluate_teacher()}
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank, "world_size": trainer.accelerator.num_processes, "task": trainer.task.name,
        "metrics": metrics, "scored": SCORED,
        "state": {k: v.tolist() for k, v in trainer.student.state_dict().items()},
    }  # fmt: skip
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
