"""Run by tests/distributed/test_detection_two_processes.py under `accelerate launch`: two steps of detection
distillation over two processes (a DETR: KD on matched queries; a torchvision Faster R-CNN: DIST on the sampled RoIs
plus mimic on the FPN), then the student's and the teacher's evaluation; each rank writes its final weights, its
metrics and how many images the metrics scored.
Usage: detection_two_ranks.py OUTPUT_DIR TEACHER_DIR STUDENT_DIR LOSS [FEATURE_LOSS]."""

import json
import os
import sys

from transformers import AutoModelForObjectDetection

import hfkd.models.torchvision_detection  # noqa: F401  (registers the torchvision detectors with the Auto class)
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
    output_dir, teacher_dir, student_dir, loss = sys.argv[1:5]
    feature_loss = sys.argv[5] if len(sys.argv) > 5 else None
    detection_metrics.table_metrics = counting(detection_metrics.table_metrics)
    args = DistillationArguments(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, max_steps=2, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        distill_loss=loss, distill_feature_loss=feature_loss, disable_tqdm=True, seed=0, remove_unused_columns=False,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=AutoModelForObjectDetection.from_pretrained(student_dir),
        teacher_model=AutoModelForObjectDetection.from_pretrained(teacher_dir), args=args, train_dataset=scenes(8),
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
