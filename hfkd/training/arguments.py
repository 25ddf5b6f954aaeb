"""DistillationArguments: TrainingArguments plus the teacher and the distillation loss."""

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from timm.optim import list_optimizers
from transformers import TrainingArguments

from hfkd.data.mixing import check_mixing_arguments
from hfkd.data.transforms import TRAIN_AUGMENTS
from hfkd.data.views import VIEW_PLACEMENTS
from hfkd.losses import CE_ONLY, get_loss_class, validate_loss_kwargs
from hfkd.tasks.base import (
    CLASSIFICATION,
    DETECTION,
    DETECTION_LOSSES,
    FEATURE_LOSSES,
    FEATURES,
    NECK_LOSSES,
    SEGMENTATION,
    TASK_NAMES,
)
from hfkd.teachers.combine import check_ensemble_arguments, feature_member_index
from hfkd.training.reporting import check_reporting
from hfkd.training.schedulers import check_schedule_arguments
from hfkd.utils.errors import UnknownNameError, UsageError
from hfkd.utils.json_arguments import parse_json_mapping

# The losses the "Pick a loss" message names for each dense task.
TASK_LOSS_HINTS = {SEGMENTATION: "kd, dist, cwd", DETECTION: ", ".join(DETECTION_LOSSES), FEATURES: "embed, dense"}


@dataclass
class DistillationArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for knowledge distillation with [`DistillationTrainer`].

    Every field below carries a `teacher_` or `distill_` prefix so that it never collides with a
    `TrainingArguments` field. Validation runs at construction, before any weights load.

    > Teacher

    teacher_model_name_or_path (`str`, `list[str]` or `None`, *optional*, defaults to `None`):
        Teacher checkpoint (Hub id or local folder) loaded when no `teacher_model` object is given to the
        trainer; a list of them (`--teacher A --teacher B`) is a teacher ensemble.
    teacher_weights (`list[float]`, *optional*, defaults to `None`), teacher_ensemble (`str`, defaults to
    `"probs"`), teacher_ensemble_temperature (`float`, *optional*), teacher_features_from (`str`, *optional*):
        How an ensemble's logits combine (`hfkd.ensemble`): one weight per teacher (normalised; equal by default);
        `"probs"` averages the teachers' distributions softened at `teacher_ensemble_temperature` (default: the
        loss's `temperature`), `"logits"` averages the logits. Feature losses take the features of the teacher
        `teacher_features_from` names (its name as given, or its 0-based position; default the first).
    teacher_model_revision (`str`, *optional*, defaults to `"main"`):
        Revision (branch, tag or commit) of the teacher checkpoint.
    teacher_model_init_kwargs (`dict` or `str`, *optional*, defaults to `None`):
        Keyword arguments for `from_pretrained` of the teacher (a JSON string on the command line).
        `trust_remote_code` stays `False` unless set here.
    teacher_cache_dir (`str`, *optional*, defaults to `None`):
        A teacher cache (`python -m hfkd.teacher_cache`): train from its stored outputs and views, never running
        the teacher. Logit losses only.
    teacher_compile (`bool`, *optional*, defaults to `False`):
        `torch.compile` the teacher (`teacher_compile_backend`, defaults to `"inductor"`).

    > Loss

    distill_loss (`str`, *optional*, defaults to `"kd"`):
        Registered loss key (see `hfkd.list_losses()`), or `"ce"` for cross-entropy only, without a teacher.
    distill_loss_kwargs (`dict` or `str`, *optional*, defaults to `None`):
        Hyperparameters of the loss, bound against its constructor (a JSON string on the command line).
        Unset keys take the paper's defaults.
    distill_feature_loss (`str`, *optional*, defaults to `None`):
        Object detection with Faster R-CNN / RetinaNet: a neck loss (`mimic`, `pkd` or `cwd`) added to the run's
        loss on the FPN levels (`--loss dist --feature_loss mimic`: DIST + mimic). Image feature extraction: the
        other of `embed` and `dense` (`--loss embed --feature_loss dense`). Its weight is its `loss_weight`.
    distill_save_projections (`bool`, *optional*, defaults to `False`):
        Image feature extraction: also write the trained projections (`distill_adapters.safetensors`) into the
        saved folder, which otherwise holds the student backbone alone (checkpoints always hold them, to resume).
    distill_feature_loss_kwargs (`dict` or `str`, *optional*, defaults to `None`):
        Hyperparameters of the feature loss (`{"loss_weight": 6}`).
    distill_pseudo_label_threshold (`float`, *optional*, defaults to `0.5`):
        Object detection with `--labelled_samples`: the teacher's detections scoring above this are the targets of
        the training images left unlabelled (the student's own loss runs on them).
    distill_ce_weight (`float`, *optional*, defaults to `1.0`):
        Weight of the student's cross-entropy with the labels.
    distill_weight (`float`, *optional*, defaults to `1.0`):
        Weight of the distillation loss.
    distill_lr_milestones (`list[float]`, *optional*, defaults to `None`):
        Multi-step learning-rate decay of the references: the lr is multiplied by `distill_lr_gamma` after each of
        these epochs (mdistiller's rule, exact per optimizer step); replaces `lr_scheduler_type`. No warm-up unless
        `warmup_steps` is set: then a linear one from `distill_lr_warmup_lr` (mmcv's and detectron2's: 500 or 1000
        iterations from 0.001 × lr).
    distill_lr_gamma (`float`, *optional*, defaults to `0.1`):
        Decay factor at each milestone.
    distill_lr_decay_epochs (`float`, *optional*, defaults to `None`), distill_lr_warmup_epochs (`float`, defaults
    to `0`), distill_lr_warmup_lr (`float`, defaults to `0`):
        DIST's `step` schedule (its `--sched step --decay-epochs --warmup-epochs --warmup-lr`, stepped per iteration;
        timm's own `step` counts differently): a warm-up in whole-epoch stairs from `distill_lr_warmup_lr` to
        `learning_rate`, then the lr times `distill_lr_gamma` every `distill_lr_decay_epochs`, counted per optimiser
        step from the end of the warm-up; replaces `lr_scheduler_type` and `warmup_steps`.
    distill_lr_milestones_unit (`str`, *optional*, defaults to `"epochs"`):
        `"steps"`: the milestones (and the `step` schedule's lengths) are optimiser steps (the lr decays from step m
        on), for streamed data whose epochs have no known length.
    distill_task (`str`, *optional*, defaults to `None`):
        The task (`--task`): `"image-classification"`, `"semantic-segmentation"`, `"object-detection"` or
        `"image-feature-extraction"` (label-free, between backbones); by default the student's (`hfkd.tasks`). A
        student of another task, or a loss that does not serve it, is refused.
    distill_logits_size (`str`, *optional*, defaults to `"teacher"`):
        Dense tasks: dense logits of different sizes are compared at the teacher's size (the student's resized,
        bilinear), or at the label size (`"labels"`: both resized).
    distill_sync_bn (`bool`, *optional*, defaults to `False`):
        The student's BatchNorm layers as `SyncBatchNorm` under multi-GPU DDP (`--sync_bn`), as the segmentation
        references train; GPUs only.
    distill_channels_last (`bool`, *optional*, defaults to `False`):
        Channels-last memory format for convolutional students and teachers (`--channels_last`).
    distill_mixup (`float`, *optional*, defaults to `0`), distill_cutmix (`float`, *optional*, defaults to `0`):
        Mixup and CutMix alphas of the training batches (`--mixup`, `--cutmix`; timm's, in its "batch" mode:
        with both, each batch takes one of them at even odds), seen by student and teacher alike; the CE then
        takes soft targets with the label smoothing folded in (`hfkd.mixing`). Losses that read the labels
        (DKD, ...) or a second view, a teacher cache and unlabelled samples are refused with them.
    distill_views_per_image (`int`, *optional*, defaults to `1`), distill_view_augments (`list[str]`, *optional*),
    distill_view_placement (`str`, *optional*, defaults to `"concat"`):
        Several augmented copies of each training image per epoch (`--views_per_image`, `hfkd.data.views`), each an
        independent draw: one `--train_augment` name per copy (`--view_augments crop_flip fixmatch`; default the
        run's for every copy), placed by `"concat"` (every copy shuffled into an epoch `views` times as long:
        StreamLined's weak + strong epoch) or `"repeated"` (DeiT's repeated augmentation: copies on consecutive
        processes, the epoch's length kept). Image classification on map-style data, without a teacher cache.

    > Optimisation (what the references' training code does and the Trainer does not)

    distill_decay_all_parameters (`bool`, *optional*, defaults to `False`):
        Weight decay on every parameter (mdistiller's and RepDistiller's optimiser groups), not only on weights.
    distill_no_decay_1d (`bool`, *optional*, defaults to `False`):
        No weight decay on any 1-D parameter: biases and every norm weight, BatchNorm's included (DIST's and timm's
        optimiser groups, `filter_bias_and_bn`); the Trainer's default decays BatchNorm weights.
    distill_timm_optimizer (`str`, *optional*, defaults to `None`), distill_timm_optimizer_kwargs (`dict`):
        A timm optimiser (`rmsproptf`, `lamb`, ...) built by `timm.optim.create_optimizer_v2`, replacing `optim`.
    distill_ema (`bool`, *optional*, defaults to `False`), distill_ema_decay (`float`, defaults to `0.9998`),
    distill_ema_warmup (`bool`, defaults to `False`):
        An exponential moving average of the student (timm's `ModelEmaV3`), evaluated, saved and pushed as the
        result, checkpointed and restored on resume.
    distill_nonfinite (`str`, *optional*, defaults to `"error"`), distill_max_skipped_steps (`int`, defaults to 10):
        A non-finite loss stops the run (`"error"`) or drops that update (`"skip"`, at most this many times).
    """

    # A list on the command line (`--teacher A B`); one name is kept as a str (`_validate_teachers`).
    teacher_model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Teacher checkpoint (Hub id or local folder), used when no teacher object is passed; repeat "
            "--teacher for an ensemble of teachers.",
            "aliases": ["--teacher"],
        },
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Teacher ensemble: one weight per --teacher (normalised to sum 1; equal by default)."},
    )
    teacher_ensemble: str = field(
        default="probs",
        metadata={
            "help": "Teacher ensemble: 'probs' averages the teachers' softened distributions, 'logits' their logits.",
            "choices": ["probs", "logits"],
        },
    )
    teacher_ensemble_temperature: float | None = field(
        default=None,
        metadata={"help": "Teacher ensemble: temperature of the 'probs' average (default: the loss's temperature)."},
    )
    teacher_features_from: str | None = field(
        default=None,
        metadata={
            "help": "Teacher ensemble: the teacher whose feature maps feature losses use (its name as given to "
            "--teacher, or its 0-based position; default the first)."
        },
    )
    teacher_model_revision: str = field(
        default="main", metadata={"help": "Revision (branch, tag or commit) of the teacher checkpoint."}
    )
    teacher_model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "JSON keyword arguments for the teacher's from_pretrained (remote code is off unless set)."},
    )
    distill_loss: str = field(
        default="kd",
        metadata={
            "help": "Distillation loss key (kd, dkd, dist, ...; see hfkd.list_losses()), or 'ce' for CE only.",
            "aliases": ["--loss"],
        },
    )
    distill_loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "JSON hyperparameters of the loss, e.g. '{\"temperature\": 4.0}'. Unset keys keep "
            "the paper defaults.",
            "aliases": ["--loss_kwargs"],
        },
    )
    distill_feature_loss: str | None = field(
        default=None,
        metadata={
            "help": "A loss added to --loss: a detector's FPN loss (mimic, pkd, cwd: --loss dist --feature_loss "
            "mimic), or label-free, embed / dense.",
            "aliases": ["--feature_loss"],
        },
    )
    distill_feature_loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "JSON hyperparameters of --feature_loss, e.g. '{\"loss_weight\": 6}'.",
                  "aliases": ["--feature_loss_kwargs"]},  # fmt: skip
    )
    distill_save_projections: bool = field(
        default=False,
        metadata={
            "help": "Label-free runs: also save the projection heads beside the student backbone.",
            "aliases": ["--save_projections"],
        },
    )
    distill_pseudo_label_threshold: float = field(
        default=0.5,
        metadata={"help": "Object detection with --labelled_samples: the teacher's detections scoring above this are "
                  "the targets of the images left unlabelled."},  # fmt: skip
    )
    distill_ce_weight: float = field(
        default=1.0, metadata={"help": "Weight of the student's cross-entropy with the labels."}
    )
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    distill_lr_milestones: list[float] | None = field(
        default=None,
        metadata={
            "help": "Epochs after which the lr is multiplied by distill_lr_gamma (the references' multi-step "
            "decay, e.g. 150 180 210); replaces lr_scheduler_type."
        },
    )
    distill_lr_gamma: float = field(
        default=0.1,
        metadata={"help": "Factor of each lr decay (the milestones', or the step schedule's)."},
    )
    distill_lr_decay_epochs: float | None = field(
        default=None,
        metadata={
            "help": "DIST's step schedule: lr x distill_lr_gamma every this many epochs, per step; "
            "replaces lr_scheduler_type."
        },
    )
    distill_lr_warmup_epochs: float = field(
        default=0.0,
        metadata={
            "help": "Stair warm-up (one per epoch) of the step schedule; replaces warmup_steps."
        },
    )
    distill_lr_warmup_lr: float = field(
        default=0.0,
        metadata={"help": "The lr a warm-up starts from: the step schedule's (1e-6 in DIST), or the milestones' "
                  "linear one over warmup_steps (mmdet, detectron2: 0.001 x lr)."},  # fmt: skip
    )
    distill_lr_milestones_unit: str = field(
        default="epochs",
        metadata={"help": "Unit of the milestones and step schedule: epochs, or steps (for streamed data)."},
    )
    distill_task: str | None = field(
        default=None,
        metadata={
            "help": "The task (default: the models', read from their configs; image-feature-extraction: label-free, "
            "between backbones).",
            "aliases": ["--task"],
            "choices": list(TASK_NAMES),
        },
    )
    distill_logits_size: str = field(
        default="teacher",
        metadata={
            "help": "Dense tasks: where student and teacher logits of other sizes are compared: 'teacher' (the "
            "student's resized to the teacher's) or 'labels' (both resized to the label size).",
            "choices": ["teacher", "labels"],
        },
    )
    distill_sync_bn: bool = field(
        default=False,
        metadata={
            "help": "Synchronise the student's BatchNorm statistics across GPUs under DDP (SyncBatchNorm), as the "
            "segmentation references train.",
            "aliases": ["--sync_bn"],
        },
    )
    distill_channels_last: bool = field(
        default=False,
        metadata={
            "help": "Channels-last memory format for convolutional student and teacher (and their inputs): faster "
            "convolutions on GPUs with tensor cores.",
            "aliases": ["--channels_last"],
        },
    )
    distill_mixup: float = field(
        default=0.0,
        metadata={"help": "Mixup alpha (timm's --mixup; Swin: 0.8); teacher and student see the same mix.",
                  "aliases": ["--mixup"]},
    )
    distill_cutmix: float = field(
        default=0.0,
        metadata={"help": "CutMix alpha (timm's --cutmix); with --mixup, each batch takes one at even odds.",
                  "aliases": ["--cutmix"]},
    )
    distill_views_per_image: int = field(
        default=1,
        metadata={
            "help": "Augmented copies of each training image per epoch (StreamLined: 2, DeiT: 3).",
            "aliases": ["--views_per_image"],
        },
    )
    distill_view_augments: list[str] | None = field(
        default=None,
        metadata={
            "help": "The --train_augment of each copy, e.g. crop_flip fixmatch (default: the run's).",
            "aliases": ["--view_augments"],
        },
    )
    distill_view_placement: str = field(
        default="concat",
        metadata={
            "help": "concat: one shuffle of all copies (StreamLined); repeated: DeiT's RASampler.",
            "aliases": ["--view_placement"],
            "choices": list(VIEW_PLACEMENTS),
        },
    )
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Train from a teacher cache written by `python -m hfkd.teacher_cache` instead of running "
            "the teacher (logit losses only)."
        },
    )
    teacher_compile: bool = field(
        default=False, metadata={"help": "torch.compile the teacher's forward (the student: --torch_compile)."}
    )
    teacher_compile_backend: str = field(
        default="inductor", metadata={"help": "torch.compile backend for the teacher (inductor, eager, ...)."}
    )
    distill_decay_all_parameters: bool = field(
        default=False,
        metadata={
            "help": "Weight decay on every parameter, biases and norm weights included, as the references' optimisers "
            "(mdistiller, RepDistiller) do; the Trainer's default exempts biases and norm weights."
        },
    )
    distill_no_decay_1d: bool = field(
        default=False,
        metadata={
            "help": "No weight decay on any 1-D parameter (biases and every norm weight, BatchNorm's too), as DIST's "
            "and timm's optimisers; the Trainer's default decays BatchNorm weights."
        },
    )
    distill_timm_optimizer: str | None = field(
        default=None,
        metadata={
            "help": "A timm optimiser by name (rmsproptf, lamb, adamw, sgd, ...; timm.optim.list_optimizers()), "
            "built by timm.optim.create_optimizer_v2 with learning_rate and weight_decay; replaces --optim."
        },
    )
    distill_timm_optimizer_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "JSON keyword arguments of the timm optimiser, e.g. '{\"alpha\": 0.9, \"eps\": 0.001}'."},
    )
    distill_ema: bool = field(
        default=False,
        metadata={
            "help": "Keep an exponential moving average of the student's weights (timm's ModelEmaV3): it is what "
            "is evaluated, saved and pushed; checkpointed and restored on resume."
        },
    )
    distill_ema_decay: float = field(default=0.9998, metadata={"help": "Decay of the student's weight average."})
    distill_ema_warmup: bool = field(
        default=False,
        metadata={"help": "Ramp the EMA decay up over the first steps (timm's warm-up: 1 - (1 + step)^-2/3)."},
    )
    distill_nonfinite: str = field(
        default="error",
        metadata={
            "help": "What a non-finite loss does: 'error' stops the run at the next logging step or save, naming "
            "the steps and the loss term (nothing non-finite is saved); 'skip' drops that step's update and counts it."
        },
    )
    distill_max_skipped_steps: int = field(
        default=10, metadata={"help": "With distill_nonfinite='skip', stop after more skipped updates than this."}
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Transformers' filter that logs a NaN/inf loss as the running average, reading the loss back "
            "every step; off, since hfkd stops on (or skips) non-finite losses itself."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep dataset columns the model's forward does not name (the collator needs them)."},
    )

    def __post_init__(self) -> None:
        self.validate_distillation()
        super().__post_init__()
        check_reporting(self.report_to)

    def validate_distillation(self) -> None:
        """Check the distillation fields; parse JSON strings into dicts. Raises `ValueError`/`KeyError`."""
        if isinstance(self.distill_loss, str):
            self.distill_loss = self.distill_loss.strip().lower()  # --loss DKD means dkd
        self._validate_teachers()
        if self.distill_decay_all_parameters and self.distill_no_decay_1d:
            raise UsageError(
                "`distill_decay_all_parameters` (decay every parameter) and `distill_no_decay_1d` (decay none of the "
                "1-D ones) contradict each other: set one of them."
            )
        self._parse_json_fields()
        self._validate_timm_optimizer()
        self._validate_ranges()
        check_schedule_arguments(self)
        check_mixing_arguments(self)
        self._validate_views()
        self._validate_loss()

    def _parse_json_fields(self) -> None:
        """The mapping fields as dicts (a JSON string on the command line, a mapping in a recipe, or unset: `{}`)."""
        self.teacher_model_init_kwargs = parse_json_mapping(
            "teacher_model_init_kwargs", self.teacher_model_init_kwargs
        )
        self.distill_loss_kwargs = parse_json_mapping("distill_loss_kwargs", self.distill_loss_kwargs)
        self.distill_feature_loss_kwargs = parse_json_mapping(
            "distill_feature_loss_kwargs", self.distill_feature_loss_kwargs
        )
        self.distill_timm_optimizer_kwargs = parse_json_mapping(
            "distill_timm_optimizer_kwargs", self.distill_timm_optimizer_kwargs
        )

    def _validate_timm_optimizer(self) -> None:
        """A known timm optimiser name (lower-cased), and no optimiser kwargs without one."""
        if self.distill_timm_optimizer is not None:
            self.distill_timm_optimizer = self.distill_timm_optimizer.lower()
            known = list_optimizers(with_description=False)
            if self.distill_timm_optimizer not in known:
                close = difflib.get_close_matches(self.distill_timm_optimizer, known, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise UsageError(
                    f"`distill_timm_optimizer={self.distill_timm_optimizer!r}` is not a timm optimiser.{hint} "
                    "See timm.optim.list_optimizers()."
                )
        elif self.distill_timm_optimizer_kwargs:
            raise UsageError("`distill_timm_optimizer_kwargs` needs `distill_timm_optimizer` (a timm optimiser name).")

    def _validate_ranges(self) -> None:
        """The EMA decay, the non-finite loss policy and the loss weights each within what they may be."""
        if not 0.0 < self.distill_ema_decay < 1.0:
            raise UsageError(f"`distill_ema_decay` must be in (0, 1), e.g. 0.9998; got {self.distill_ema_decay!r}.")
        if self.distill_nonfinite not in ("error", "skip"):
            raise UsageError(f"`distill_nonfinite` must be 'error' or 'skip', got {self.distill_nonfinite!r}.")
        if not (isinstance(self.distill_max_skipped_steps, int) and self.distill_max_skipped_steps >= 0):
            raise UsageError(
                f"`distill_max_skipped_steps` must be an int >= 0, got {self.distill_max_skipped_steps!r}."
            )
        if not 0.0 <= self.distill_pseudo_label_threshold < 1.0:
            raise UsageError(
                f"`distill_pseudo_label_threshold` is a detection score in [0, 1), e.g. 0.5; got "
                f"{self.distill_pseudo_label_threshold!r}."
            )
        for name in ("distill_ce_weight", "distill_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UsageError(f"`{name}` must be a finite number >= 0, got {value!r}.")

    def _validate_views(self) -> None:
        """Copies per image: a count >= 1, one known augment per copy when named, a known placement (with one view,
        there is nothing to place: `--views_per_image 1` turns a recipe's copies off), and no teacher cache (it
        stores one crop-and-flip view per image and epoch)."""
        views, augments = self.distill_views_per_image, self.distill_view_augments
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise UsageError(f"`distill_views_per_image` is a count of copies >= 1 (StreamLined: 2), got {views!r}.")
        if self.distill_view_placement not in VIEW_PLACEMENTS:
            raise UsageError(
                f"`distill_view_placement` must be one of {', '.join(VIEW_PLACEMENTS)}, got "
                f"{self.distill_view_placement!r}."
            )
        if augments is not None:
            augments = self.distill_view_augments = [augments] if isinstance(augments, str) else list(augments)
            unknown = [name for name in augments if name not in TRAIN_AUGMENTS]
            if unknown or len(augments) != views:
                raise UsageError(
                    f"`distill_view_augments` names one --train_augment ({', '.join(TRAIN_AUGMENTS)}) for each of the "
                    f"distill_views_per_image={views} copies; got {augments}. E.g. --views_per_image 2 "
                    "--view_augments crop_flip fixmatch."
                )
        if views > 1 and self.teacher_cache_dir is not None:
            raise UsageError(
                f"--views_per_image {views}: a teacher cache stores one crop-and-flip view per image and epoch, not "
                "copies. Run the teacher live (drop --teacher_cache_dir) or drop --views_per_image."
            )

    def _validate_loss(self) -> None:
        """A registered loss (or ce, which takes no kwargs) whose kwargs bind, and that a teacher cache can feed."""
        if self.distill_loss == CE_ONLY:
            if self.distill_loss_kwargs:
                raise UsageError(
                    f"`distill_loss='ce'` takes no loss kwargs, got {self.distill_loss_kwargs}. "
                    "Drop `distill_loss_kwargs` or choose a distillation loss."
                )
            return
        try:
            loss_cls = get_loss_class(self.distill_loss)  # KeyError with close matches
        except KeyError as err:
            raise UnknownNameError(f"{err.args[0]} Or {CE_ONLY!r}: cross-entropy only, without a teacher.") from None
        if self.distill_task is not None:
            self.check_task(self.distill_task)
        if self.teacher_cache_dir is not None:
            missing = loss_cls.needs.beyond_logits()
            if missing:
                raise UsageError(
                    f"Loss {self.distill_loss!r} needs {' and '.join(missing)} of the teacher, but a teacher cache "
                    "(`teacher_cache_dir`) stores logits only. Use a logit loss (kd, dkd, dist, ...) with the cache, "
                    "or run the teacher live."
                )
        try:
            validate_loss_kwargs(self.distill_loss, self.distill_loss_kwargs)
        except (TypeError, ValueError) as err:
            raise UsageError(f"`distill_loss_kwargs`: {err}") from None
        self._validate_feature_loss()

    def _validate_feature_loss(self) -> None:
        """`distill_feature_loss`: a neck loss other than the run's, with kwargs that bind; kwargs need it."""
        feature = self.distill_feature_loss
        if feature is None:
            if self.distill_feature_loss_kwargs:
                raise UsageError("`distill_feature_loss_kwargs` needs `distill_feature_loss` (mimic, pkd or cwd).")
            return
        self.distill_feature_loss = feature = feature.strip().lower()
        if feature not in NECK_LOSSES + FEATURE_LOSSES:
            raise UsageError(
                f"--feature_loss {feature!r} is not a neck loss: pass one of {', '.join(NECK_LOSSES)} (detection; the "
                f"run's --loss takes the logit losses), or {' / '.join(FEATURE_LOSSES)} (image-feature-extraction)."
            )
        if feature == self.distill_loss or self.distill_loss == CE_ONLY:
            raise UsageError(
                f"--feature_loss {feature} comes on top of a distillation loss of another kind: pass --loss kd, dist "
                f"or dkd with it, or --loss {feature} alone."
            )
        try:
            validate_loss_kwargs(feature, self.distill_feature_loss_kwargs)
        except (TypeError, ValueError) as err:
            raise UsageError(f"`distill_feature_loss_kwargs`: {err}") from None

    def check_task(self, task: str) -> None:
        """Refuse what cannot serve `task`: a loss for other tasks; for dense tasks, Mixup/CutMix and a teacher cache
        (both are classification's). Called when the arguments are built with `--task`, and by the trainer with the
        task it read from the models."""
        loss_cls = get_loss_class(self.distill_loss) if self.uses_teacher else None
        if loss_cls is not None and task not in loss_cls.tasks:
            raise UsageError(
                f"Loss {self.distill_loss!r} serves {', '.join(sorted(loss_cls.tasks))}, not {task}. Pick a loss for "
                f"{task} ({TASK_LOSS_HINTS.get(task, 'kd, dkd, dist')}; see the README's loss table)."
            )
        if task == DETECTION and self.uses_teacher and self.distill_loss not in DETECTION_LOSSES:
            raise UsageError(
                f"--loss {self.distill_loss} has no form for detectors; pass one of {', '.join(DETECTION_LOSSES)} "
                "(the README's detection table says which serves DETR, Faster R-CNN and RetinaNet)."
            )
        self._check_feature_loss_task(task)
        if task == FEATURES:
            self._check_label_free()
        if task == DETECTION and len(self.teacher_names) > 1:
            raise UsageError(
                "A teacher ensemble averages classifiers' outputs; detectors' queries do not pair up across models: "
                "pass one --teacher for object detection."
            )
        if task != CLASSIFICATION and self.distill_views_per_image > 1:
            raise UsageError(f"--views_per_image copies image classification samples; {task} runs take one view.")
        if task not in (CLASSIFICATION, FEATURES) and self.mixes_batches:
            raise UsageError(f"--mixup / --cutmix mix image classification batches; {task} runs take neither.")
        if task != CLASSIFICATION and self.teacher_cache_dir is not None:
            raise UsageError(
                f"A teacher cache stores a classifier's logits per view; {task} runs distil from a live teacher: "
                "drop --teacher_cache_dir."
            )

    def _check_feature_loss_task(self, task: str) -> None:
        """`--feature_loss`: a neck loss for detection, the other label-free loss for image-feature-extraction."""
        feature = self.distill_feature_loss
        if feature is None:
            return
        if task == FEATURES and feature not in FEATURE_LOSSES:
            raise UsageError(f"--feature_loss {feature}: image-feature-extraction adds embed or dense; pass one.")
        if task not in (DETECTION, FEATURES) or (task == DETECTION and feature not in NECK_LOSSES):
            raise UsageError(
                f"--feature_loss {feature} distils a detector's neck (mimic, pkd, cwd) or a backbone's features "
                f"(embed, dense, image-feature-extraction); drop it for {task}."
            )

    def _check_label_free(self) -> None:
        """image-feature-extraction: one live teacher and a label-free loss (there is no task loss to train)."""
        if not self.uses_teacher:
            raise UsageError(
                "image-feature-extraction has no task loss: --loss ce would train nothing. Pass --loss embed (global "
                "embeddings) or --loss dense (patch features) and a --teacher."
            )
        if len(self.teacher_names) > 1:
            raise UsageError("Label-free distillation reads one backbone's features: pass one --teacher.")

    @property
    def mixes_batches(self) -> bool:
        return bool(self.distill_mixup or self.distill_cutmix)

    @property
    def uses_teacher(self) -> bool:
        return self.distill_loss != CE_ONLY

    @property
    def teacher_names(self) -> list[str]:
        """The teacher checkpoints named in the arguments: none, one, or the members of an ensemble."""
        names = self.teacher_model_name_or_path
        return [] if names is None else [names] if isinstance(names, str) else list(names)

    def feature_teacher_index(self, names: list[str]) -> int:
        """The position in `names` of the ensemble member named by `teacher_features_from` (default 0)."""
        return feature_member_index(self.teacher_features_from, names)

    def _validate_teachers(self) -> None:
        names = self.teacher_model_name_or_path
        if isinstance(names, (list, tuple)):
            if not names or not all(isinstance(n, str) and n for n in names):
                raise UsageError(f"`teacher_model_name_or_path` must be a name or a list of names, got {names!r}.")
            self.teacher_model_name_or_path = names[0] if len(names) == 1 else list(names)
        check_ensemble_arguments(
            self.teacher_names, self.teacher_weights, self.teacher_ensemble, self.teacher_ensemble_temperature,
            self.teacher_features_from,
        )  # fmt: skip

    def check_teacher_given(self, teacher_model: Any = None) -> None:
        """Refuse a distillation loss without a teacher: no `teacher_model`, checkpoint name or teacher cache."""
        if not self.uses_teacher or teacher_model is not None:
            return
        if self.teacher_model_name_or_path is None and self.teacher_cache_dir is None:
            raise UsageError(
                f"distill_loss={self.distill_loss!r} needs a teacher: pass `--teacher <model>` on the command line, "
                "`teacher_model=` to the trainer or `teacher_model_name_or_path`, or use `--loss ce` "
                "(`distill_loss='ce'`) to train on the labels alone."
            )
