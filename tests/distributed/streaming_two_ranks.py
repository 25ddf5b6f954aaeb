"""Run by tests/distributed/test_streaming_two_processes.py under `accelerate launch` (2 CPU processes, gloo): KD for
one pass of each process's part of a streamed parquet dataset, then evaluation on the whole streamed eval split.
Each rank writes which rows it trained on, which rows Accelerate's own handling of the stream would have given it,
its evaluation and its weights.
Usage: streaming_two_ranks.py OUTPUT_DIR DATA_DIR TEACHER_DIR STUDENT_DIR."""

import json
import os
import sys

import datasets
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification, Trainer

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.data.batch_transform import make_transform_fn
from hfkd.data.collator import DistillationCollator
from hfkd.data.streaming import load_streaming_dataset, set_stream_transform
from hfkd.data.transforms import ImageConfig, build_transforms
from hfkd.metrics import compute_accuracy_metrics, top_k_indices

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # see tests/test_streaming.py


def rows_of(loader):
    return [row for batch in loader for row in batch["sample_index"].tolist()]


def main() -> None:
    output_dir, data_dir, teacher_dir, student_dir = sys.argv[1:5]
    common = dict(
        output_dir=output_dir, report_to="none", use_cpu=True, per_device_train_batch_size=8,
        per_device_eval_batch_size=2, max_steps=3, optim="sgd", learning_rate=0.5, logging_steps=1,
        save_strategy="no", distill_loss="kd", disable_tqdm=True, seed=0,
    )  # fmt: skip
    args = DistillationArguments(**common)
    data = load_streaming_dataset(
        data_dir, seed=0, shuffle_buffer_size=8, rank=args.process_index, world_size=args.world_size
    )
    config = ImageConfig(size=(32, 32))
    train_fn = make_transform_fn(build_transforms(config, True, train_augment="rrc"), None, "image", "label", seed=0)
    train = set_stream_transform(data.splits["train"], train_fn, num_labels=3, train=True, key_column="row")
    eval_fn = make_transform_fn(build_transforms(config, False), None, "image", "label")
    evaluation = set_stream_transform(data.splits["eval"], eval_fn, num_labels=3, train=False)

    counted = []

    def metrics(prediction):
        counted.append(len(prediction.label_ids))
        return compute_accuracy_metrics(prediction)

    student = AutoModelForImageClassification.from_pretrained(student_dir)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher_dir, args=args, train_dataset=train, eval_dataset=evaluation,
        compute_metrics=metrics, preprocess_logits_for_metrics=top_k_indices,
    )  # fmt: skip
    seen, original = [], trainer.compute_loss

    def spy(model, inputs, *a, **kw):
        if model.training:
            seen.extend(inputs["sample_index"].tolist())
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    result = trainer.evaluate()

    # What Accelerate makes of the same stream without StreamingMixin: its default (the main process reads and
    # dispatches slices of its batches), and with dispatch_batches=False (it shards the part again).
    dispatched = rows_of(Trainer.get_train_dataloader(trainer))
    loader = DataLoader(train, batch_size=8, collate_fn=DistillationCollator())
    resharded = rows_of(
        prepare_data_loader(loader, num_processes=args.world_size, process_index=args.process_index,
                            dispatch_batches=False)
    )  # fmt: skip
    # Evaluation of the whole eval stream without dispatching (why check_streaming_arguments refuses it).
    undispatched = DistillationTrainer(
        model=student, teacher_model=teacher_dir, args=DistillationArguments(
            **common, accelerator_config={"dispatch_batches": False}
        ), eval_dataset=evaluation, compute_metrics=metrics, preprocess_logits_for_metrics=top_k_indices,
    ).evaluate()  # fmt: skip

    record = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "trained_rows": seen,
        "dispatched_rows": dispatched,
        "resharded_rows": resharded,
        "eval": result,
        "eval_undispatched": undispatched,
        "eval_counts": counted,
        "epoch": trainer.state.epoch,
        "parameters": {name: p.tolist() for name, p in student.named_parameters()},  # (BN statistics are per rank)
    }
    with open(os.path.join(output_dir, f"rank{args.process_index}.json"), "w") as f:
        json.dump(record, f)
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
