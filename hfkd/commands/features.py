"""The label-free steps of `hfkd distill` (`--task image-feature-extraction`, a backbone teacher, or `--loss embed` /
`--loss dense`): the data (`FeatureData`, the two steps of `ImageClassificationData`: training images without labels,
an evaluation split with or without them) and the models (`load_feature_models`: both as backbones, without heads).
"""

from __future__ import annotations

import functools
from typing import Any

from transformers.utils import logging

from hfkd.commands.arguments import DataArguments, ModelArguments, RunArguments
from hfkd.commands.data import RunData, image_transform, model_image_configs
from hfkd.commands.smoke import synthetic_dataset
from hfkd.data.batch_transform import make_transform_fn, set_image_transform
from hfkd.data.datasets import add_sample_index
from hfkd.data.decode import filter_unreadable
from hfkd.models.availability import model_config
from hfkd.models.embeddings import check_backbone_config
from hfkd.models.loading import ModelSpec, load_backbone, load_image_processor
from hfkd.tasks.features.data import feature_columns, load_feature_dataset
from hfkd.training.arguments import DistillationArguments
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import neutral_name, neutral_text

logger = logging.get_logger(__name__)


class FeatureRunData(RunData):
    """A label-free run's data: `label_column` is the evaluation split's (`None`: the loss alone is reported)."""

    def info(self, data_args: DataArguments) -> dict[str, Any]:
        info = {**super().info(data_args), "train_labels_read": False, "eval_labelled": self.label_column is not None}
        if data_args.train_dir:  # the image folders are the data, not the --dataset default
            info["dataset"] = neutral_name(data_args.train_dir)
        # Local folders by their names only: the record is uploaded with the model.
        info["source"] = neutral_text(self.source, data_args.dataset, data_args.train_dir, data_args.validation_dir)
        return info


class FeatureData:
    """A label-free run's data and its preprocessing: `load()` reads the splits (see `hfkd.tasks.features.data`);
    `splits(data, models)` gives each its batch transform: the student's view and the teacher's own pixels of the
    same crop and flip (function matching), as `ImageClassificationData` does, with no labels in training. Override
    `transform` (one model's pipeline) to preprocess otherwise."""

    def __init__(
        self, data_args: DataArguments, run_args: RunArguments, args: DistillationArguments, cache: Any = None, *,
        cache_dir: str | None = None,
    ) -> None:  # fmt: skip
        if cache is not None:
            raise UsageError("A teacher cache holds a classifier's logits; label-free runs use a live teacher.")
        if data_args.streaming or data_args.labelled_samples is not None:
            raise UsageError("--streaming and --labelled_samples are image classification's; drop them here.")
        self.data_args, self.run_args, self.args, self.cache_dir = data_args, run_args, args, cache_dir

    def load(self) -> RunData:
        data_args = self.data_args
        if self.run_args.smoke:
            size, classes = self.run_args.smoke_image_size, self.run_args.smoke_num_labels
            splits = synthetic_dataset(data_args.dataset, data_args.label_column, image_size=size, num_labels=classes)
            splits["train"] = splits["train"].remove_columns(data_args.label_column or "label")
        else:
            splits = load_feature_dataset(
                data_args.dataset, train_dir=data_args.train_dir, validation_dir=data_args.validation_dir,
                seed=self.args.seed, cache_dir=self.cache_dir, max_train_samples=data_args.max_train_samples,
                max_eval_samples=data_args.max_eval_samples, config_name=data_args.dataset_config,
                train_split=data_args.train_split, eval_split=data_args.eval_split,
            )  # fmt: skip
        image_column, label_column = feature_columns(splits, data_args.image_column, data_args.label_column)
        names = list(splits["eval"].features[label_column].names) if label_column is not None else []
        evaluation = f"k-NN over {len(names)} classes" if label_column else "the loss alone (no labels)"
        logger.info(f"Data: {splits.source}; {len(splits['train'])} unlabelled training images; {len(splits['eval'])} "
                    f"evaluation images, scored by {evaluation}")  # fmt: skip
        return FeatureRunData(splits, image_column, label_column, names, splits.source)

    def transform(self, config: Any, *, train: bool) -> Any:
        """One model's pipeline: PIL image -> normalised tensor of `config`'s size, mean and std."""
        return image_transform(self.data_args, config, train=train)

    def splits(self, data: RunData, models: tuple[Any, Any, list[Any], list[Any]]) -> dict[str, Any]:
        """`{"train": ..., "eval": ...}`, each with its batch transform, for the trainer."""
        student_config, teacher_configs = model_image_configs(self.data_args, models)
        result = {}
        for split, train in (("train", True), ("eval", False)):
            shared = train and self.data_args.teacher_input == "student"  # the teacher reads the student's tensor
            teachers = None if shared else [self.transform(c, train=train) for c in teacher_configs] or None
            transform_fn = make_transform_fn(
                self.transform(student_config, train=train), teachers, data.image_column,
                None if train else data.label_column,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )  # fmt: skip
            part = data.splits[split]
            if self.data_args.skip_unreadable:
                part, skipped = filter_unreadable(part, data.image_column)
                logger.info(f"{split}: skipped {skipped} unreadable images")
            result[split] = set_image_transform(add_sample_index(part), transform_fn)
        return result


def check_backbones(specs: list[ModelSpec]) -> None:
    """Each model's features can be read (`hfkd.models.embeddings`), judged from its config before weights load."""
    for spec in specs:
        check_backbone_config(model_config(spec), spec.name)


def load_feature_models(
    student_spec: ModelSpec, teacher_specs: list[ModelSpec], model_args: ModelArguments, args: DistillationArguments
) -> tuple[Any, Any, list[Any], list[Any]]:
    """(student, its processor, teachers, their processors), every model a backbone (`load_backbone`: a
    classifier's checkpoint without its head, CLIP's and SigLIP's vision towers)."""
    check_backbones([student_spec, *teacher_specs])
    common = {"trust_remote_code": model_args.trust_remote_code, "cache_dir": model_args.cache_dir}
    student = load_backbone(
        student_spec, pretrained=model_args.student_pretrained, drop_path_rate=model_args.drop_path_rate, **common
    )
    teacher_kwargs = {**common, **args.teacher_model_init_kwargs}
    load = functools.partial(load_backbone, pretrained=model_args.teacher_pretrained, **teacher_kwargs)
    teachers = [load(spec) for spec in teacher_specs]
    trust = teacher_kwargs["trust_remote_code"]
    processors = [load_image_processor(spec, trust_remote_code=trust) for spec in teacher_specs]
    student_processor = load_image_processor(student_spec, trust_remote_code=model_args.trust_remote_code)
    logger.info(
        f"Backbones: student {type(student).__name__}, teacher {', '.join(type(t).__name__ for t in teachers)}"
    )
    return student, student_processor, teachers, processors
