"""DistillationTrainer: a transformers Trainer whose loss combines CE with a distillation loss.

One step reads: the teacher's outputs on the batch (`hfkd.teacher.Teacher`, live or cached) -> the student and the
loss in one module forward (`hfkd.wrapper.DistillationModule`) -> `distill_ce_weight · CE + distill_weight · loss`.
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from torch import nn
from torch.utils.data import Sampler
from transformers import PreTrainedModel, Trainer
from transformers.utils import logging

from hfkd.data.batch import IMAGE_KEYS, INDEX_KEYS, LABELS, PIXEL_VALUES, SAMPLE_INDEX
from hfkd.data.collator import DistillationCollator, fast_tensor_columns
from hfkd.data.mixing import BatchMixer
from hfkd.data.views import expand_views, views_sampler
from hfkd.hub.model_card import ModelCardInfo, build_model_card
from hfkd.losses import DistillBatch, logits_of
from hfkd.models.features import is_convolutional
from hfkd.models.label_space import check_teacher_labels
from hfkd.tasks.registry import resolve_task
from hfkd.teachers.base import Teacher, TeacherOutputs
from hfkd.teachers.build import build_teacher
from hfkd.training.accumulation import StepCounts, batch_size, count_step
from hfkd.training.arguments import DistillationArguments
from hfkd.training.callbacks import STUDENT_TERM, TEACHER_TERM, EpochCallback, NonFiniteGuard, check_finite_weights
from hfkd.training.checkpoints import CheckpointMixin
from hfkd.training.evaluation import EvaluationMixin
from hfkd.training.optimization import OptimizationMixin
from hfkd.training.streaming import StreamingMixin
from hfkd.training.student_module import DistillationModule, build_loss, check_student
from hfkd.utils import upstream
from hfkd.utils.errors import UsageError
from hfkd.utils.local_names import recipe_name
from hfkd.utils.upstream import TrainerInternals
from hfkd.version import __version__

logger = logging.get_logger(__name__)


class DistillationTrainer(
    CheckpointMixin, OptimizationMixin, StreamingMixin, EvaluationMixin, TrainerInternals, Trainer
):
    """A [`~transformers.Trainer`] that distils a frozen teacher into the student `model`.

    The loss is `args.distill_ce_weight · CE(student, labels) + args.distill_weight · L(student, teacher)`, where
    L is the registered loss `args.distill_loss` (a loss with `replaces_task_loss` gives the CE term itself: DeiT's
    class head, not the averaged heads). The teacher runs in eval mode under `torch.no_grad()` and the
    same autocast as the student; it is never optimised, wrapped in DDP, or saved. Evaluation runs the student
    only and reports `eval_accuracy` and `eval_top5_accuracy` (the task's metrics); a label-free task
    (image-feature-extraction, between backbones) has no CE term and evaluates its distillation loss and a k-NN top-1.

    Args:
        model: the student.
        args (`DistillationArguments`): training and distillation arguments.
        teacher_model (`PreTrainedModel`, `str` or `hfkd.teacher.Teacher`, *optional*): the teacher, a checkpoint to
            load, or a ready `Teacher` (e.g. a `CachedTeacher`); defaults to `args.teacher_model_name_or_path`, or
            the cache of `args.teacher_cache_dir`. Not needed with `distill_loss="ce"`.
        recipe (`str`, *optional*): the recipe the run came from, recorded in `distill_config.json`.
        data_info (`dict`, *optional*): what the run trained on (dataset, split sizes, columns), recorded likewise.
        Other arguments are those of [`~transformers.Trainer`]. `compute_metrics` defaults to top-1/top-5
        accuracy, and `preprocess_logits_for_metrics` to keeping the top-5 indices.
    """

    _tag_names = ["hfkd", "knowledge-distillation"]
    # compute_loss weighs each micro-batch by its share of the optimiser step (hfkd.training.accumulation).
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: DistillationArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        optimizer_cls_and_kwargs: tuple | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        *,
        teacher_model: PreTrainedModel | nn.Module | Teacher | str | None = None,
        recipe: str | None = None,
        data_info: dict[str, Any] | None = None,
    ) -> None:
        _check_args(args, compute_loss_func, model)
        args.check_teacher_given(teacher_model)
        self.task = resolve_task(args, model, teacher_model if isinstance(teacher_model, nn.Module) else None)
        if data_collator is None or isinstance(data_collator, DistillationCollator):
            # The default batches only what a step reads, from fixed-shape tensors when a dataset holds lists.
            data_collator = data_collator or self.task.collator()
            train_dataset = fast_tensor_columns(train_dataset)
            eval_dataset = _map_datasets(fast_tensor_columns, eval_dataset)
        # Copies of each image per epoch (StreamLined's weak + strong, DeiT's repeated augmentation): `train_sampler`.
        train_dataset = expand_views(train_dataset, args.distill_views_per_image)
        # The task's metrics reduce each evaluation batch (top-5 classes, per-image pixel counts) in
        # prediction_step, so that evaluation keeps no logits and no label maps.
        self._task_metrics = compute_metrics is None and preprocess_logits_for_metrics is None
        compute_metrics = self.task.metrics() if compute_metrics is None else compute_metrics
        # Before Trainer.__init__, which calls call_model_init: its student is adopted once the teacher is built.
        self.teacher, self.ema, self.distill_loss = None, None, None
        self.sampler_epochs: EpochCallback | None = None  # the repeated copies' sampler follows the epochs
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.label_names = self.args.label_names or [LABELS]
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.recipe, self.data_info = recipe, data_info
        self._guard = NonFiniteGuard(args.distill_nonfinite, args.distill_max_skipped_steps, self.accelerator)
        self.add_callback(self._guard)
        self._follow_epochs(self.train_dataset)
        if self.task.label_free and set(getattr(self.train_dataset, "column_names", None) or []) & {LABELS, "label"}:
            logger.warning(f"{self.task.name}: the training set's labels are not read (there is no task loss).")
        self.teacher = build_teacher(teacher_model, self.args, self.accelerator, backbone=self.task.label_free)
        if self.teacher is not None:
            if not self.task.label_free:
                check_teacher_labels(self.teacher, getattr(self.model.config, "num_labels", None))
            self.teacher.check_dataset(self.train_dataset)
        # Mixup/CutMix, or None; label-free runs mix the images alone.
        self._mixer = BatchMixer.for_run(self.args, self.model, soft_targets=not self.task.label_free)
        self.model = self.model_wrapped = self._adopt_student(self.model)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """`Trainer.call_model_init`, which `Trainer.train` calls again for every run with `model_init` (each trial
        of a hyperparameter search): the new student becomes this trainer's, with its own EMA and a new loss module
        (built from the arguments as they are then: the trial's values are set on them afterwards)."""
        student = super().call_model_init(trial)
        built = getattr(self, "_guard", None) is not None  # not yet inside Trainer.__init__
        return self._adopt_student(student) if built else student

    def _adopt_student(self, student: nn.Module) -> nn.Module:
        """Make `student` the one this trainer trains: channels-last if asked, its EMA, and the module that runs it
        with the distillation loss (placed on the device unless the Trainer leaves placement to DeepSpeed, FSDP or
        the model's own device map: `place_model_on_device`). Returns what becomes `self.model`."""
        if self.args.distill_channels_last and is_convolutional(student):
            student.to(memory_format=torch.channels_last)
        if self.args.distill_sync_bn:
            student = self._sync_batch_norm(student)
        if self.ema is not None:
            self.remove_callback(self.ema)
        self.ema = self._build_ema(student)
        if self.teacher is None:
            return student
        dataset = self.train_dataset
        self.distill_loss = build_loss(
            self.args.distill_loss,
            self.args.distill_loss_kwargs,
            student,
            self.teacher.model,
            self._probe_batch,
            # Images, not copies: memory banks are indexed by `sample_index`.
            dataset_size=len(dataset) // self.args.distill_views_per_image if hasattr(dataset, "__len__") else None,
            autocast=self.accelerator.autocast,
        )
        self.distill_loss = self.task.distill_loss(self.distill_loss, student, self.teacher.model)
        module = DistillationModule(student, self.distill_loss, align=self.task.align)
        return module.to(self.args.device) if self.place_model_on_device else module

    def _sync_batch_norm(self, student: nn.Module) -> nn.Module:
        """`--sync_bn`: the student's BatchNorm layers as `SyncBatchNorm` when DDP runs on GPUs (one process: as
        they are; torch's SyncBatchNorm has no CPU kernel, so a CPU run is refused in one line)."""
        if self.args.world_size <= 1:
            return student
        if self.args.device.type == "cpu":
            raise UsageError("--sync_bn synchronises BatchNorm across GPUs; this run is on the CPU: drop --sync_bn.")
        return nn.SyncBatchNorm.convert_sync_batchnorm(student)

    @property
    def teacher_model(self) -> nn.Module | None:
        """The live teacher module (`None` for CE-only runs and for a teacher cache)."""
        return None if self.teacher is None else self.teacher.model

    @property
    def student(self) -> nn.Module:
        """The bare student, whether or not the trainer's model wraps it with the loss."""
        model = self.accelerator.unwrap_model(self.model)
        return model.student if isinstance(model, DistillationModule) else model

    def _probe_batch(self) -> dict[str, torch.Tensor] | None:
        """A collated batch of two training samples, for losses that size adapters from feature shapes (a stream's
        first two)."""
        dataset = self.train_dataset
        if dataset is None:
            return None
        examples = [dataset[i] for i in range(min(2, len(dataset)))] if hasattr(dataset, "__len__") else None
        examples = examples if examples is not None else list(itertools.islice(iter(dataset), 2))
        return self.data_collator(examples) if examples else None

    def batch_columns(self) -> list[str]:
        """The dataset columns a batch keeps when `remove_unused_columns` is set: the student's inputs, and what the
        teacher and the loss read (every teacher's own pixels, the strong view, labels, sample indices, cached
        outputs); the Trainer would keep only what the student module's forward names."""
        student_inputs = list(inspect.signature(self.student.forward).parameters)
        teacher_keys = list(self.teacher.batch_keys()) if self.teacher is not None else []
        return [*student_inputs, *IMAGE_KEYS, *INDEX_KEYS, *teacher_keys, "label", "label_ids"]

    def keeps_all_columns(self, dataset: Any) -> bool:
        """Whether `remove_unused_columns` leaves `dataset` as it is: a dataset with a batch transform
        (`set_transform`) builds its tensors from raw columns no forward names (the image, the label), so the
        transform decides what a batch holds, and the collator keeps what a step reads."""
        return ((getattr(dataset, "format", None) or {}).get("type")) == "custom"

    def copies_sampler(self, dataset: Any) -> Sampler | None:
        """With `distill_view_placement="repeated"`, DeiT's repeated augmentation over the copies of each image of
        `dataset` (`hfkd.data.views.RepeatedViewsSampler`), whose global order Accelerate's batch sharding turns into
        RASampler's share of each process; else None."""
        args = self.args
        if args.distill_views_per_image == 1 or not hasattr(dataset, "__len__"):
            return None
        if args.distill_view_placement == "repeated" and args.accelerator_config.split_batches:
            raise UsageError(
                "--view_placement repeated lays out whole per-process batches; Accelerate's split_batches cuts each "
                "batch across the processes instead. Drop split_batches from --accelerator_config."
            )
        return views_sampler(
            args.distill_view_placement,
            args.distill_views_per_image,
            len(dataset) // args.distill_views_per_image,
            world_size=args.world_size,
            batch_size=upstream.train_batch_size(self),
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )

    def train_sampler(self, dataset: Any) -> Sampler | None:
        """The training sampler, or None for the Trainer's own: `copies_sampler`, told each epoch's number."""
        sampler = self.copies_sampler(dataset)
        # Accelerate forwards `set_epoch` to a sampler under its batch sharding, but not once a resumed epoch skips
        # batches: the epoch callback tells it, before the epoch's first batch is drawn.
        if self.sampler_epochs is not None:
            self.remove_callback(self.sampler_epochs)
        self.sampler_epochs = EpochCallback(sampler) if sampler is not None else None
        if self.sampler_epochs is not None:
            self.add_callback(self.sampler_epochs)
        return sampler

    def _follow_epochs(self, dataset: Any) -> None:
        """A dataset transform whose random draws depend on the epoch (`set_epoch`) is told each epoch's number."""
        transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
        if not hasattr(transform, "set_epoch"):
            return
        if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
            raise UsageError(
                "The training transform draws each sample's augmentation from (seed, epoch, index), and persistent "
                "dataloader workers would keep the first epoch's copy of it: every epoch would see the same crops. "
                "Drop --dataloader_persistent_workers (workers are then restarted, with the new epoch, each epoch)."
            )
        self.add_callback(EpochCallback(transform))

    # ------------------------------------------------------------------------------------------- the step

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """The next optimiser step's micro-batches, and what they hold in all (`StepCounts`), which `compute_loss`
        gets as `num_items_in_batch` to weigh each micro-batch by its share of the step (`hfkd.training.accumulation`).
        """
        batches = list(itertools.islice(epoch_iterator, num_batches))
        across = self.args.average_tokens_across_devices
        mixing = self._mixer is not None  # soft targets for every sample
        counts = count_step(
            batches, self.accelerator, counter=self.task.count_labelled, all_labelled=mixing, across_processes=across
        )
        return batches, counts

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        return super().training_step(model, self._channels_last(inputs), num_items_in_batch)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list | None = None
    ) -> Any:
        """`Trainer.prediction_step`; with the task's metrics, each batch's logits and labels reduced to what they
        need (`Task.reduce`) before the Trainer gathers and keeps them. A label-free task's batch without labels
        gives its distillation loss alone (the Trainer would run the model without the loss)."""
        if self.task.label_free and inputs.get(LABELS) is None:
            with torch.no_grad():
                loss = self.compute_loss(model, self._channels_last(send_to_device(inputs, self.args.device)))
            return loss.detach().mean(), None, None
        loss, logits, labels = super().prediction_step(
            model, self._channels_last(inputs), prediction_loss_only, ignore_keys
        )
        if self._task_metrics and logits is not None and labels is not None:
            logits, labels = self.task.reduce(logits, labels)
        return loss, logits, labels

    def _channels_last(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """`inputs` with their image tensors channels-last when `distill_channels_last` asks for it."""
        if not self.args.distill_channels_last:
            return inputs
        return {
            k: v.contiguous(memory_format=torch.channels_last) if _is_image(k, v) else v for k, v in inputs.items()
        }

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if model.training and self._mixer is not None:
            inputs = self._mixer(inputs, self.state.global_step)  # soft labels from here on
        labels = inputs.get(LABELS)
        shares = self._shares(num_items_in_batch, inputs)
        # A label-free task's evaluation runs the teacher too: its loss is the distillation loss.
        if self.teacher is None or not (model.training or self.task.label_free):
            loss, logits = self._student_loss(model, inputs, labels, shares[0])
            return (loss, {"logits": logits}) if return_outputs else loss

        teacher_outputs = self.teacher(inputs, epoch=self.state.epoch or 0.0)
        inputs = self.task.teacher_labels(inputs, teacher_outputs.main)
        labels = inputs.get(LABELS)
        batch = self._distill_batch(inputs, teacher_outputs)
        student_outputs, loss_dict = model(**self.task.model_inputs(inputs), distill=(teacher_outputs, batch))
        logits = self.task.watched(student_outputs)
        ce = self._task_ce(student_outputs, labels, loss_dict.pop("ce", None))
        loss = self._total_loss(ce, loss_dict["loss"], *shares)
        if model.training:  # a label-free task's evaluation also comes here: its terms are not the step's
            self._record_metrics(ce, loss_dict)
            terms = {f"distill/{name}": value for name, value in loss_dict.items()}
            terms.update({"loss": loss, "distill/ce": ce, STUDENT_TERM: logits})
            self._guard.observe({**terms, TEACHER_TERM: self.task.watched(teacher_outputs.main, "teacher")})
        return (loss, {"logits": logits}) if return_outputs else loss

    def _task_ce(self, student_outputs: Any, labels: Any, method_ce: torch.Tensor | None) -> torch.Tensor | None:
        """The CE term of the step (`None` without labels): the task loss plus the loss's own CE terms (`"ce"`), or
        those alone when the loss computes the whole task loss itself (`replaces_task_loss`: DeiT's class head)."""
        if labels is None:
            return None
        if getattr(self.distill_loss, "replaces_task_loss", False):
            if method_ce is None:
                raise UsageError(f"Loss {self.args.distill_loss!r} replaces the task loss but returned no 'ce' term.")
            return method_ce
        ce = self.task.task_loss(student_outputs, labels, self._cross_entropy)  # None: the task has no task loss
        return method_ce if ce is None else ce if method_ce is None else ce + method_ce

    def _student_loss(
        self, model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None, ce_share: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation (and CE-only training) runs the student alone: the loss (`eval_loss`) is its task loss."""
        if labels is None:
            raise UsageError("The batch has no `labels`; the CE-only loss and evaluation need them.")
        outputs = model(**self.task.model_inputs(inputs))
        loss = self.task.task_loss(outputs, labels, self._cross_entropy)
        if model.training:
            self._guard.observe({"loss": loss, STUDENT_TERM: logits_of(outputs)})
        return (loss if ce_share is None else loss * ce_share), self.task.predictions(outputs)

    def _total_loss(self, ce: torch.Tensor | None, distill: torch.Tensor, ce_share: Any, share: Any) -> torch.Tensor:
        """`distill_ce_weight · CE + distill_weight · L`, each term times its share of the optimiser step if given."""
        ce_weight, weight = self.args.distill_ce_weight, self.args.distill_weight
        loss = distill * (weight if share is None else weight * share)
        return loss if ce is None else loss + ce * (ce_weight if ce_share is None else ce_weight * ce_share)

    def _shares(self, counts: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        """The weights of this micro-batch's CE mean and loss mean in its optimiser step (`StepCounts`, from
        `get_batch_samples`); `None` outside the Trainer's training loop (evaluation, a step called on its own),
        where the Trainer may pass a count of its own for a student whose forward takes loss kwargs."""
        if not isinstance(counts, StepCounts):
            return None, None
        return counts.shares(inputs.get(LABELS), batch_size(inputs))

    def _distill_batch(self, inputs: dict[str, Any], teacher_outputs: TeacherOutputs) -> DistillBatch:
        """What the loss gets besides both outputs; unlabelled samples (label < 0) take the teacher's top class for
        losses that split on the target class."""
        labels = inputs.get(LABELS)
        loss_labels = labels
        if torch.is_tensor(labels) and self.distill_loss.needs.labels and labels.ndim == 1:
            loss_labels = torch.where(labels >= 0, labels, logits_of(teacher_outputs.main).argmax(-1))
        return DistillBatch(
            labels=loss_labels,
            epoch=float(self.state.epoch or 0.0),
            sample_index=inputs.get(SAMPLE_INDEX),
            teacher_strong=teacher_outputs.strong,
            cross_entropy=None if labels is None else lambda logits: self._cross_entropy(logits, labels),
            pixel_mask=self.task.pixel_mask(labels, teacher_outputs.main),
        )

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean CE over the labelled samples, in float32 whatever the autocast dtype.

        A negative label (the `datasets` convention for a missing label) marks an unlabelled sample: it adds no CE,
        only the distillation loss, so the teacher supervises what nobody labelled. A micro-batch without labels
        has CE 0. Label smoothing follows `args.label_smoothing_factor`, as the Trainer would apply it. Soft targets
        (B, C) (Mixup/CutMix, smoothing folded in) give timm's `SoftTargetCrossEntropy`.
        """
        if labels.is_floating_point() and labels.ndim == 2:
            return -(labels * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
        labels = labels.long()
        labelled = labels >= 0
        ce_sum = F.cross_entropy(
            logits.float(),
            labels.masked_fill(~labelled, -100),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=self.args.label_smoothing_factor,
        )
        return ce_sum / labelled.sum().clamp_min(1)

    def _record_metrics(self, ce: torch.Tensor | None, loss_dict: dict[str, torch.Tensor]) -> None:
        # Detached tensors, no .item(): reading a value here would synchronise the device every step.
        if ce is not None:
            self._metrics["ce"].append(ce.detach())
        for name, value in loss_dict.items():
            self._metrics[name].append(value.detach().float())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_train_log = not any(key.startswith("eval_") for key in logs)
        if is_train_log:
            # Every process logs at the same steps: the check's collective is safe here.
            self._guard.check(self.state.global_step)
            if self._guard.mode == "skip":
                logs["distill/skipped_steps"] = self._guard.skipped
        if is_train_log and self._metrics:
            names = sorted(self._metrics)
            means = torch.stack([torch.stack(self._metrics[name]).mean() for name in names])
            # Every process calls log() at the same step, so the mean across processes is a collective.
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({f"distill/{name}": value for name, value in zip(names, means.tolist())})
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------- saving

    def distill_config(self) -> dict[str, Any]:
        """What `distill_config.json` records: the loss, its resolved kwargs, the weights, the teacher and data."""
        args = self.args
        return {
            "hfkd_version": __version__,
            "task": self.task.name,
            "distill_loss": args.distill_loss,
            "distill_loss_kwargs": self.distill_loss.hparams() if self.distill_loss is not None else {},
            "distill_ce_weight": args.distill_ce_weight,
            "distill_weight": args.distill_weight,
            "teacher": self.teacher.record() if self.teacher is not None else None,
            "recipe": recipe_name(self.recipe),
            "data": self.data_info,
        }

    # ------------------------------------------------------------------------------------------- results

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        student_metrics: dict[str, float] | None = None,
        teacher_metrics: dict[str, float] | None = None,
        baseline_metrics: dict[str, float] | None = None,
        is_timm: bool | None = None,
        student_from_scratch: bool = False,
    ) -> None:
        """Write `output_dir/README.md`: metadata, results next to the teacher's, loss, kwargs and citation.

        Runs on the main process only. `student_metrics` defaults to the latest evaluation; `teacher_metrics`
        and `baseline_metrics` (the CE-only student) are shown when given.
        """
        if not self.is_world_process_zero():
            return
        check_finite_weights(self.accelerator.unwrap_model(self.model), "a model card")
        info = ModelCardInfo.for_run(
            self.distill_config(),
            self.args,
            self.student.config,
            paper=getattr(self.distill_loss, "paper", None),
            model_name=model_name,
            finetuned_from=finetuned_from,
            dataset=dataset,
            dataset_args=dataset_args,
            tags=tags,
            license=license,
            student_metrics=student_metrics if student_metrics is not None else self.latest_eval_metrics(),
            teacher_metrics=teacher_metrics,
            baseline_metrics=baseline_metrics,
            is_timm=is_timm,
            student_from_scratch=student_from_scratch,
            log_history=self.state.log_history,
        )
        build_model_card(info, output_dir=self.args.output_dir)


def _is_image(key: str, value: Any) -> bool:
    return key.endswith(PIXEL_VALUES) and torch.is_tensor(value) and value.ndim == 4


def _map_datasets(function: Callable, datasets: Any) -> Any:
    """`function` over one dataset or a dict of named evaluation datasets."""
    if isinstance(datasets, dict):
        return {name: function(dataset) for name, dataset in datasets.items()}
    return function(datasets)


def _check_args(args: Any, compute_loss_func: Callable | None, model: nn.Module | None) -> None:
    """What the trainer refuses before it builds anything (a student the loss cannot train included)."""
    if args is None:
        raise UsageError("DistillationTrainer needs `args=DistillationArguments(output_dir=..., ...)`.")
    if not isinstance(args, DistillationArguments):
        raise TypeError(
            f"`args` must be a DistillationArguments, got {type(args).__name__}. Build it with "
            "`hfkd.DistillationArguments(...)`, which takes every TrainingArguments field."
        )
    if compute_loss_func is not None:
        raise UsageError("DistillationTrainer computes its own loss; drop `compute_loss_func`.")
    if model is not None and args.uses_teacher:
        check_student(args.distill_loss, model)
    if args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
        raise UsageError(
            "DistillationTrainer does not support FSDP (its student module wraps the student and the loss, which "
            "FSDP's auto-wrap cannot see into): train with DDP (`accelerate launch --multi_gpu`), or shard with "
            "DeepSpeed ZeRO (`--deepspeed`)."
        )
