"""Streamed data (hfkd.streaming): each process reads its own part, the map-style transforms, a short distillation
run on a stream, and what check_streaming_arguments refuses. The two-process run is in
tests/distributed/test_streaming_two_processes.py."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from datasets import load_dataset
from transformers import ViTImageProcessor

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.commands.arguments import DataArguments, parse_args
from hfkd.data.batch_transform import make_transform_fn, set_image_transform
from hfkd.data.datasets import add_sample_index
from hfkd.data.streaming import check_streaming_arguments, load_streaming_dataset, set_stream_transform, stream_mark
from hfkd.data.transforms import ImageConfig, build_transforms
from hfkd.metrics import compute_accuracy_metrics, top_k_indices
from hfkd.training.streaming import StreamLoader

from .distributed.streaming_data import (
    CLASSES,
    image_rows,
    write_image_folder,
    write_parquet_dataset,
)
from .testing_utils import tiny_resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

STUDENT = ImageConfig(size=(32, 32))
TEACHER = ImageConfig(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # own pixels: renormalised


@pytest.fixture(autouse=True)
def no_pause_after_each_pass(monkeypatch):
    # datasets pauses 5 s after each pass over interleaved parquet shards (apache/arrow#45214, a crash when the
    # interpreter exits while reader threads run); the tests read many short passes and exit long after them.
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    return write_parquet_dataset(tmp_path_factory.mktemp("parquet"), unlabelled_every=7)


def row_ids(stream, key):
    return [example["row"] if key == "row" else example["image"]["path"] for example in stream]


def transform_pair(seed=3, train=True, teacher=TEACHER):
    build = lambda config: build_transforms(config, train, train_augment="rrc")  # noqa: E731
    return make_transform_fn(build(STUDENT), build(teacher) if teacher else None, "image", "label", seed=seed)


def tensor_bytes(stream):
    return sorted(example["pixel_values"].numpy().tobytes() for example in stream)


# ----------------------------------------------------------------------------------------------- (a) sharding


@pytest.mark.parametrize("source", ["parquet", "imagefolder"])
def test_processes_read_disjoint_parts_that_cover_the_data(source, parquet_dir, tmp_path):
    path, key = {
        "parquet": lambda: (parquet_dir, "row"),
        "imagefolder": lambda: (write_image_folder(tmp_path), "path"),
    }[source]()
    whole = load_streaming_dataset(str(path), seed=1, shuffle_buffer_size=5)
    assert whole.names == CLASSES and (whole.image_column, whole.label_column) == ("image", "label")
    everything = row_ids(whole.splits["train"], key)
    assert len(everything) == len(set(everything)) > 0
    parts = [
        row_ids(load_streaming_dataset(str(path), seed=1, shuffle_buffer_size=5, rank=rank, world_size=2)
                .splits["train"], key)
        for rank in (0, 1)
    ]  # fmt: skip
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    if source == "parquet":  # 4 files: whole shards, 2 per process
        assert load_streaming_dataset(str(path), rank=1, world_size=2).splits["train"].num_shards == 2
        assert len(parts[0]) == len(parts[1]) == 24
    # The evaluation split is not split by process: every process has all of it.
    assert len(list(load_streaming_dataset(str(path), rank=1, world_size=2).splits["eval"])) == len(
        list(whole.splits["eval"])
    )


def test_each_pass_reshuffles_and_unlabelled_rows_stay_or_go(parquet_dir):
    train = load_streaming_dataset(str(parquet_dir), seed=1, shuffle_buffer_size=5).splits["train"]
    first = row_ids(train, "row")
    train.set_epoch(1)
    second = row_ids(train, "row")
    assert sorted(first) == sorted(second) and first != second
    labels = [example["label"] for example in train]
    assert labels.count(-1) == 48 // 7  # the teacher supervises these
    kept = load_streaming_dataset(str(parquet_dir), drop_unlabelled=True).splits["train"]
    assert all(example["label"] >= 0 for example in kept) and len(list(kept)) == 48 - 48 // 7


def test_missing_evaluation_split_and_demo_data_are_refused(parquet_dir):
    with pytest.raises(ValueError, match="no split 'nope'.*--eval_split"):
        load_streaming_dataset(str(parquet_dir), eval_split="nope")
    with pytest.raises(ValueError, match="no evaluation split.*--eval_split"):
        load_streaming_dataset("parquet", data_files={"train": str(parquet_dir / "data" / "train-*.parquet")})
    with pytest.raises(ValueError, match="drop --streaming"):
        load_streaming_dataset("fashion-mnist")


# ----------------------------------------------------------------------------------------------- (c) transforms


def test_stream_transform_gives_the_map_style_tensors(parquet_dir, tmp_path):
    """With the dataset's own row ids as keys, every tensor equals the map-style path's for that index."""
    raw = load_streaming_dataset(str(parquet_dir), seed=1, shuffle_buffer_size=5).splits
    map_style = load_dataset(str(parquet_dir), cache_dir=str(tmp_path))
    stream_fn, map_fn = transform_pair(), transform_pair()
    stream = set_stream_transform(raw["train"], stream_fn, num_labels=3, train=True, key_column="row")
    reference = set_image_transform(add_sample_index(map_style["train"]), map_fn)
    for epoch in (0, 1):
        stream_fn.set_epoch(epoch)
        map_fn.set_epoch(epoch)
        examples = list(stream)
        assert sorted(e["sample_index"] for e in examples) == list(range(48))
        for example in examples:
            expected = reference[example["sample_index"]]
            assert set(example) == {"pixel_values", "teacher_pixel_values", "labels", "sample_index"}
            assert torch.equal(example["pixel_values"], expected["pixel_values"])
            assert torch.equal(example["teacher_pixel_values"], expected["teacher_pixel_values"])
            assert example["labels"] == expected["labels"]

    evaluation = set_stream_transform(raw["eval"], transform_pair(train=False), num_labels=3, train=False)
    reference_eval = set_image_transform(map_style["validation"], transform_pair(train=False))
    for i, example in enumerate(evaluation):  # in order, unshuffled
        assert torch.equal(example["pixel_values"], reference_eval[i]["pixel_values"])
        assert "sample_index" not in example


def test_content_keys_give_the_same_crops_on_any_number_of_processes(parquet_dir):
    def crops(rank, world_size, epoch=0):
        raw = load_streaming_dataset(str(parquet_dir), seed=1, rank=rank, world_size=world_size).splits["train"]
        fn = transform_pair(teacher=None)
        fn.set_epoch(epoch)
        stream = set_stream_transform(raw, fn, num_labels=3, train=True)
        return tensor_bytes(stream)

    one = crops(0, 1)
    assert len(set(one)) == 48
    assert sorted(crops(0, 2) + crops(1, 2)) == one
    assert set(crops(0, 1, epoch=1)).isdisjoint(one)  # the next pass draws new crops


def test_labels_outside_the_classes_are_refused():
    def run(labels, train):
        rows = image_rows(len(labels), seed=5).remove_columns("label").add_column("label", labels)
        fn = transform_pair(train=train, teacher=None)
        return list(set_stream_transform(rows.to_iterable_dataset(), fn, num_labels=3, train=train))

    assert [e["labels"] for e in run([0, -1, 2], train=True)] == [0, -1, 2]
    with pytest.raises(ValueError, match="eval: the image 001.png is unlabelled"):
        run([0, -1, 2], train=False)
    with pytest.raises(ValueError, match="label 3 of the image 002.png is outside"):
        run([0, 1, 3], train=True)


# ----------------------------------------------------------------------------------------------- (b) trainer


def streamed_splits(parquet_dir, **kwargs):
    data = load_streaming_dataset(str(parquet_dir), seed=0, shuffle_buffer_size=8, **kwargs)
    train = set_stream_transform(data.splits["train"], transform_pair(), num_labels=3, train=True)
    evaluation = set_stream_transform(data.splits["eval"], transform_pair(train=False), num_labels=3, train=False)
    return train, evaluation


def distill_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=4, per_device_train_batch_size=16,
        per_device_eval_batch_size=4, optim="sgd", learning_rate=0.1, save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, distill_loss="kd",
    )  # fmt: skip
    return DistillationArguments(**{**defaults, **kwargs})


def test_distillation_trains_and_evaluates_on_streamed_data(parquet_dir, tmp_path):
    train, evaluation = streamed_splits(parquet_dir)
    student, teacher = tiny_resnet(3, seed=1), tiny_resnet(3, wide=True, seed=2)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    counted = []

    def metrics(prediction):
        counted.append(len(prediction.label_ids))
        return compute_accuracy_metrics(prediction)

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=distill_args(tmp_path), train_dataset=train,
        eval_dataset=evaluation, compute_metrics=metrics, preprocess_logits_for_metrics=top_k_indices,
    )  # fmt: skip
    seen, original = [], trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        if model.training:
            seen.append(inputs["labels"].tolist())
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    assert isinstance(trainer.get_train_dataloader(), StreamLoader)
    trainer.train()
    assert any(not torch.equal(initial[k], v) for k, v in student.state_dict().items())
    # 48 rows in batches of 16: 3 per pass, so the 4th step is in the second pass (and its labels -1 came through).
    assert [len(labels) for labels in seen] == [16] * 4
    assert sum(labels.count(-1) for labels in seen[:3]) == 48 // 7
    assert trainer.state.epoch == pytest.approx(1 + 1 / 3)
    assert [round(e["epoch"], 3) for e in trainer.state.log_history if "loss" in e] == [0, 0, 1, 1.333]
    result = trainer.evaluate()
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and counted == [9]


def test_dataloader_workers_and_accumulation_get_each_pass_with_new_crops(parquet_dir, tmp_path):
    data = load_streaming_dataset(str(parquet_dir), seed=0, shuffle_buffer_size=8)
    train = set_stream_transform(data.splits["train"], transform_pair(), num_labels=3, train=True, key_column="row")
    args = distill_args(tmp_path, max_steps=6, gradient_accumulation_steps=2, dataloader_num_workers=2)
    trainer = DistillationTrainer(model=tiny_resnet(3), teacher_model=tiny_resnet(3, wide=True), args=args,
                                  train_dataset=train)  # fmt: skip
    crops, original = {}, trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        for row, pixels in zip(inputs["sample_index"].tolist(), inputs["pixel_values"]):
            crops.setdefault(row, set()).add(pixels.numpy().tobytes())
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    # Each worker batches its 2 files (16 + 8 rows): 4 batches a pass, 12 for 6 steps of 2, so 3 whole passes,
    # each with the pass's own crops (the workers got the transform after set_epoch).
    assert trainer.state.epoch == 3.0
    assert sorted(crops) == list(range(48)) and all(len(seen) == 3 for seen in crops.values())


def test_feature_losses_probe_the_stream_and_a_resumed_run_restarts_its_pass(parquet_dir, tmp_path):
    train, _ = streamed_splits(parquet_dir)
    teacher = tiny_resnet(3, wide=True, seed=2)
    args = distill_args(tmp_path, distill_loss="fitnet", save_strategy="steps", save_steps=4)
    trainer = DistillationTrainer(model=tiny_resnet(3, seed=1), teacher_model=teacher, args=args, train_dataset=train)
    assert any(p.requires_grad for p in trainer.distill_loss.parameters())  # adapters sized on the probed stream
    trainer.train()  # 4 steps of 3 per pass: stopped in pass 1
    checkpoint = str(tmp_path / "out" / "checkpoint-4")
    with pytest.raises(ValueError, match="--ignore_data_skip"):
        trainer.train(resume_from_checkpoint=checkpoint)
    args = distill_args(tmp_path, distill_loss="fitnet", max_steps=5, ignore_data_skip=True)
    resumed = DistillationTrainer(model=tiny_resnet(3, seed=1), teacher_model=teacher, args=args, train_dataset=train)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 5 and resumed.state.log_history[-2]["epoch"] == 1.0
    assert stream_mark(train)[2].epoch == 1  # pass 1 again, with its crops


def test_the_trainer_refuses_what_a_stream_cannot_serve(parquet_dir, tmp_path):
    train, _ = streamed_splits(parquet_dir)
    with pytest.raises(ValueError, match="--eval_strategy epoch"):
        DistillationTrainer(
            model=tiny_resnet(3), teacher_model=tiny_resnet(3, wide=True), train_dataset=train,
            args=distill_args(tmp_path, eval_strategy="epoch"), eval_dataset=train,
        )  # fmt: skip
    other = streamed_splits(parquet_dir, rank=1, world_size=2)[0]
    trainer = DistillationTrainer(model=tiny_resnet(3), teacher_model=tiny_resnet(3, wide=True),
                                  train_dataset=other, args=distill_args(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match="part of process 1 of 2, and this is process 0 of 1"):
        trainer.get_train_dataloader()


# ----------------------------------------------------------------------------------------------- (d) arguments


@pytest.mark.parametrize(
    ("training", "data", "message"),
    [
        ({"max_steps": -1}, {}, "--max_steps is not set.*Set --max_steps"),
        ({"teacher_cache_dir": "cache"}, {}, "--teacher_cache_dir.*drop --teacher_cache_dir"),
        ({"distill_lr_milestones": [100, 200]}, {}, "--distill_lr_milestones counts epochs.*_unit steps"),
        ({"distill_lr_decay_epochs": 2.4}, {}, "--distill_lr_decay_epochs .* count epochs.*_unit steps"),
        ({"distill_loss": "crd"}, {}, "--distill_loss crd needs dataset indices.*Choose another loss"),
        ({"eval_strategy": "epoch"}, {}, "--eval_strategy epoch.*--eval_strategy steps with --eval_steps"),
        ({"save_strategy": "epoch"}, {}, "--save_strategy epoch.*--save_strategy steps with --save_steps"),
        ({"logging_strategy": "epoch"}, {}, "--logging_strategy epoch.*--logging_strategy steps"),
        ({"dataloader_persistent_workers": True, "dataloader_num_workers": 2}, {},
         "--dataloader_persistent_workers.*Drop it"),
        ({"accelerator_config": {"split_batches": True}}, {}, "--accelerator_config split_batches.*Drop it"),
        ({"accelerator_config": {"dispatch_batches": False}}, {}, "--accelerator_config dispatch_batches false"),
        ({"resume_from_checkpoint": "out/checkpoint-5"}, {}, "--resume_from_checkpoint without.*--ignore_data_skip"),
        ({}, {"max_train_samples": 100}, "--max_train_samples picks seeded.*Drop it"),
        ({}, {"max_eval_samples": 100}, "--max_eval_samples picks seeded.*Drop it"),
        ({}, {"labelled_samples": 100}, "--labelled_samples picks seeded.*label -1"),
        ({}, {"dataset": "fashion-mnist"}, "--dataset fashion-mnist.*Drop --streaming"),
        ({}, {"shuffle_buffer_size": 0}, "--shuffle_buffer_size 0.*1000"),
    ],
)  # fmt: skip
def test_check_streaming_arguments_refuses(training, data, message, tmp_path):
    args = DistillationArguments(**{"output_dir": str(tmp_path), "report_to": "none", "max_steps": 10, **training})
    data_args = SimpleNamespace(**{"dataset": "org/data", **data})
    with pytest.raises(ValueError, match=f"^--streaming: {message}"):
        check_streaming_arguments(args, data_args)


def test_check_streaming_arguments_accepts_a_streamable_run_and_lists_every_problem(tmp_path):
    args = DistillationArguments(
        output_dir=str(tmp_path), report_to="none", max_steps=1000, distill_loss="dkd", eval_strategy="steps",
        distill_lr_milestones=[600, 800], distill_lr_milestones_unit="steps", dataloader_num_workers=2,
        resume_from_checkpoint="out/checkpoint-5", ignore_data_skip=True,
    )  # fmt: skip
    check_streaming_arguments(args, DataArguments(dataset="ILSVRC/imagenet-1k"))
    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", teacher_cache_dir="cache")
    with pytest.raises(ValueError, match="(?s)does not combine with:\n- --max_steps.*\n- --teacher_cache_dir"):
        check_streaming_arguments(args)


# ----------------------------------------------------------------------------------------------- the script


def test_the_script_streams_and_refuses_what_cannot_stream_when_parsing(parquet_dir, tmp_path):
    for name, wide in (("student", False), ("teacher", True)):
        tiny_resnet(len(CLASSES), wide=wide, seed=1).save_pretrained(tmp_path / name)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / name)
    out = tmp_path / "run"
    argv = ["--dataset", str(parquet_dir), "--streaming", "--shuffle_buffer_size", "8", "--student",
            str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--loss", "kd", "--use_cpu",
            "--report_to", "none", "--per_device_train_batch_size", "8", "--save_strategy", "no",
            "--output_dir", str(out)]  # fmt: skip
    metrics = run_image_distill.main([*argv, "--max_steps", "3"])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3
    data = json.loads((out / "distill_config.json").read_text())["data"]
    assert data["streamed"] is True and data["train_images"] is None
    with pytest.raises(ValueError, match="--max_steps is not set"):
        parse_args([*argv[:-1], str(tmp_path / "other")])
    with pytest.raises(ValueError, match="--labelled_samples picks seeded random rows"):
        parse_args([*argv, "--max_steps", "3", "--labelled_samples", "10"])
