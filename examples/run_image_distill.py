#!/usr/bin/env python
"""Distil an image classifier into a smaller one with hfkd.

    accelerate launch examples/run_image_distill.py --teacher microsoft/swin-large --student resnet-50 --loss dist \
        --dataset imagenet-1k --output_dir runs/swinl-r50-dist --bf16 --push_to_hub

    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/run_image_distill.py \
        --config recipes/<dataset>/<method>/<student>_from_<teacher>.yaml --output_dir <dir>

`--teacher` and `--student` take a transformers Hub id, a timm Hub id (`timm/...`), a local folder, a timm
architecture name or a short alias (`resnet-50`, `swin-large`, ...). `--dataset` takes a Hub dataset id, a local
folder in imagefolder layout, or the embedded demo data (`fashion-mnist`, `digits`). `--loss ce` (or no teacher)
trains with cross-entropy only: fine-tune a teacher on your labels, or get the CE baseline. Every
`TrainingArguments` flag works; `--config recipe.yaml` sets defaults that flags override.

The run reads top to bottom: parse -> resolve the models (offline, no weights) -> data -> load the models ->
transforms -> trainer -> train -> evaluate -> model card (or push). This is `hfkd distill` written out: the command
(`hfkd.commands.distill.main`) runs the same steps, in the same order, from the same functions. Copy this file to
change a step. To read other data or preprocess images otherwise, replace `builder = data_builder(...)` below with
your own builder: for image classification a subclass of `hfkd.commands.data.ImageClassificationData` that overrides
`transform` (one model's pipeline, PIL image -> tensor) or `load` (the raw splits and class names); segmentation runs
(`--task semantic-segmentation`, or segmentation models) build theirs with
`hfkd.commands.segmentation.SegmentationData` (override `transform`: the joint image and mask pipeline). Label-free
distillation of a foundation model into a backbone (`--loss embed --feature_loss dense`, a teacher without a head, or
`--task image-feature-extraction`) builds its data with `hfkd.commands.features.FeatureData`.
"""

from __future__ import annotations

import sys

from transformers import set_seed

from hfkd.commands.arguments import parse_args
from hfkd.commands.cli import run_command
from hfkd.commands.distill import (
    build_trainer,
    data_builder,
    evaluate,
    open_cache,
    resolve_models,
    run_phases,
    run_task,
    setup_logging,
    task_models,
    train,
    write_card,
)
from hfkd.commands.run_folder import prepare_output_dir, run_settings, start_run
from hfkd.commands.smoke import apply_smoke
from hfkd.utils.json_arguments import parse_json_mapping


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, run_args, training_args, recipe = parse_args(argv, prog="run_image_distill.py")
    setup_logging(training_args)
    if run_args.smoke:
        apply_smoke(model_args, data_args, run_args, training_args)

    # Everything that can be checked without weights or data is checked first.
    settings = run_settings(model_args, data_args, training_args)
    training_args.resume_from_checkpoint = prepare_output_dir(
        training_args.output_dir,
        settings,
        overwrite=run_args.overwrite_output_dir,
        resume=training_args.resume_from_checkpoint,
    )
    student_spec, teacher_specs = resolve_models(model_args, training_args)
    do_train, do_eval = run_phases(run_args, model_args)
    baseline = parse_json_mapping("--baseline_metrics", run_args.baseline_metrics, files=True) or None
    cache = open_cache(training_args)
    set_seed(training_args.seed)

    # The task (from --task or the models' configs), then the data and its preprocessing, one builder: its splits
    # are read before the models load (the student's head takes the class names) and get their transforms after
    # (each model's own preprocessing).
    task = run_task(training_args, student_spec, teacher_specs)
    builder = data_builder(task, data_args, run_args, training_args, cache, model_args, teacher_specs)
    data = builder.load()
    models = task_models(task, student_spec, teacher_specs, model_args, training_args, data, data_args)
    splits = builder.splits(data, models)
    trainer = build_trainer(training_args, models, splits, cache, recipe=recipe, data_info=data.info(data_args))
    if do_train:
        if training_args.should_save:
            start_run(training_args.output_dir, settings, overwrite=run_args.overwrite_output_dir)
        train(trainer, training_args)
    metrics, teacher_metrics = evaluate(trainer, run_args) if do_eval else ({}, None)
    if do_train:
        results = {"student_metrics": metrics, "teacher_metrics": teacher_metrics}
        write_card(trainer, student_spec, model_args, data, data_args, {**results, "baseline_metrics": baseline})
    return metrics


if __name__ == "__main__":
    # A value you gave that cannot work is one line (HFKD_TRACEBACK=1 shows where it was raised); any other error
    # keeps its traceback.
    sys.exit(run_command(main, "run_image_distill.py"))
