"""DistillationTrainer: a transformers Trainer whose loss combines CE with a distillation loss."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import EvalPrediction, PreTrainedModel, Trainer
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import logging

from . import __version__
from .arguments import DistillationArguments
from .features import (
    PreactivationRecorder,
    bn_before_relu_stats,
    classifier_head,
    probe_feature_shapes,
    require_preactivations,
)
from .losses import DistillBatch, LossContext, create_loss, get_loss_class, logits_of
from .metrics import compute_accuracy_metrics, top_k_indices
from .schedulers import get_multistep_schedule, optimizer_steps_per_epoch
from .teacher import (
    deepspeed_zero_stage,
    is_convolutional,
    load_teacher,
    prepare_deepspeed_teacher,
    prepare_teacher,
    teacher_id,
)
from .teacher_cache import TeacherCache
from .wrapper import ADAPTERS_NAME, DistillationModule

logger = logging.get_logger(__name__)

DISTILL_CONFIG_NAME = "distill_config.json"
# Batch keys consumed by the trainer and the loss, never passed to the student's forward.
_DISTILL_INPUT_KEYS = (
    "labels",
    "teacher_pixel_values",
    "sample_index",
    "strong_pixel_values",
    "teacher_strong_pixel_values",
)


def _num_labels(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "num_labels", None)


class DistillationTrainer(Trainer):
    """A [`~transformers.Trainer`] that distils a frozen teacher into the student `model`.

    The loss is `args.distill_ce_weight · CE(student, labels) + args.distill_weight · L(student, teacher)`, where
    L is the registered loss `args.distill_loss`. The teacher runs in eval mode under `torch.no_grad()` and the
    same autocast as the student; it is never optimised, wrapped in DDP, or saved. Evaluation runs the student
    only and reports `eval_accuracy` and `eval_top5_accuracy`.

    Args:
        model: the student.
        args (`DistillationArguments`): training and distillation arguments.
        teacher_model (`PreTrainedModel` or `str`, *optional*): the teacher, or a checkpoint to load; defaults to
            `args.teacher_model_name_or_path`. Not needed with `distill_loss="ce"`.
        Other arguments are those of [`~transformers.Trainer`]. `compute_metrics` defaults to top-1/top-5
        accuracy, and `preprocess_logits_for_metrics` to keeping the top-5 indices.
    """

    _tag_names = ["hfkd", "knowledge-distillation"]

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
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
    ) -> None:
        if args is None:
            raise ValueError("DistillationTrainer needs `args=DistillationArguments(output_dir=..., ...)`.")
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                f"`args` must be a DistillationArguments, got {type(args).__name__}. Build it with "
                "`hfkd.DistillationArguments(...)`, which takes every TrainingArguments field."
            )
        if compute_loss_func is not None:
            raise ValueError("DistillationTrainer computes its own loss; drop `compute_loss_func`.")
        if compute_metrics is None:
            compute_metrics = compute_accuracy_metrics
            if preprocess_logits_for_metrics is None:
                preprocess_logits_for_metrics = top_k_indices
        teacher_source = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if args.uses_teacher and teacher_source is None and args.teacher_cache_dir is None:
            raise ValueError(
                f"distill_loss={args.distill_loss!r} needs a teacher: pass `teacher_model=` to the trainer or set "
                "`teacher_model_name_or_path`, or use `distill_loss='ce'` to train on the labels alone."
            )
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
        # The Trainer sets this flag in __init__; our losses are per-micro-batch means, so the Trainer must
        # divide by the accumulation steps itself (exact gradient accumulation).
        self.model_accepts_loss_kwargs = False
        if args.distill_channels_last and is_convolutional(self.model):
            self.model.to(memory_format=torch.channels_last)
        if self.args.label_names is None:
            self.label_names = ["labels"]
        self._metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.teacher_model: nn.Module | None = None
        self.distill_loss = None
        # Hooks recording pre-activation maps, for losses that declare `requires_preactivations`.
        self._teacher_preacts: PreactivationRecorder | None = None
        self._student_preacts: PreactivationRecorder | None = None
        self.teacher_cache: TeacherCache | None = None
        self.recipe_path: str | None = None
        self.data_info: dict[str, Any] | None = None
        if not args.uses_teacher:
            if teacher_model is not None:
                logger.warning("distill_loss='ce' trains on the labels alone; the teacher is ignored.")
            return
        if args.teacher_cache_dir is not None:
            # Offline distillation: the teacher's outputs come from the cache, the teacher never runs.
            self.teacher_cache = TeacherCache(args.teacher_cache_dir)
            self._check_label_spaces(self.teacher_cache)
        else:
            if isinstance(teacher_source, str):
                teacher_source = load_teacher(
                    teacher_source, revision=args.teacher_model_revision, init_kwargs=args.teacher_model_init_kwargs
                )
            self._check_label_spaces(teacher_source)
            if deepspeed_zero_stage(self.accelerator) == 3:
                self.teacher_model = prepare_deepspeed_teacher(teacher_source, self.accelerator)
            else:
                self.teacher_model = prepare_teacher(
                    teacher_source,
                    self.args.device,
                    dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
                    channels_last=args.distill_channels_last,
                    compile_backend=args.teacher_compile_backend if args.teacher_compile else None,
                )

        self.distill_loss = create_loss(
            args.distill_loss, context=self._loss_context(train_dataset), **args.distill_loss_kwargs
        )
        self.distill_loss.to(self.args.device)
        if self.distill_loss.requires_preactivations:
            self._teacher_preacts = PreactivationRecorder(self.teacher_model, "teacher")
        if any(p.requires_grad for p in self.distill_loss.parameters()) or self.distill_loss.requires_classifier_heads:
            # Adapters train with the student: one module, so the optimizer, DDP and checkpoints see them. A loss
            # that runs the student's head on its own inputs also runs inside the wrapped (DDP) forward.
            self.model = DistillationModule(self.model, self.distill_loss).to(self.args.device)
            self.model_wrapped = self.model
        elif self.distill_loss.requires_preactivations:
            self._student_preacts = PreactivationRecorder(self.model, "student")

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The references' multi-step decay when `distill_lr_milestones` is set, else the Trainer's schedule."""
        if self.args.distill_lr_milestones is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if not hasattr(self.train_dataset, "__len__"):
            raise ValueError("`distill_lr_milestones` counts epochs, which needs a training dataset with a length.")
        steps_per_epoch = optimizer_steps_per_epoch(
            len(self.train_dataset),
            self.args.per_device_train_batch_size,
            self.args.world_size,
            self.args.gradient_accumulation_steps,
            self.args.dataloader_drop_last,
        )
        self.lr_scheduler = get_multistep_schedule(
            optimizer or self.optimizer, self.args.distill_lr_milestones, self.args.distill_lr_gamma, steps_per_epoch
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _loss_context(self, train_dataset: Any) -> LossContext:
        """What the loss may need before training: classes, dataset size, and feature shapes when it uses them."""
        context = LossContext(
            num_classes=_num_labels(self.model),
            dataset_size=len(train_dataset) if hasattr(train_dataset, "__len__") else None,
        )
        loss_cls = get_loss_class(self.args.distill_loss)
        if loss_cls.requires_preactivations:
            require_preactivations(self.model, "student")
            context.extra["teacher_bn_stats"] = bn_before_relu_stats(self.teacher_model, "teacher")
        if loss_cls.requires_hidden_states and train_dataset is not None and len(train_dataset) > 0:
            # Probe both models once on real inputs so that losses can size their adapters.
            probe = self.data_collator([train_dataset[i] for i in range(min(2, len(train_dataset)))])
            pixels = probe["pixel_values"].to(self.args.device)
            teacher_pixels = probe.get("teacher_pixel_values", probe["pixel_values"]).to(self.args.device)
            context.student_feature_shapes = probe_feature_shapes(self.model, pixels)
            context.teacher_feature_shapes = probe_feature_shapes(self.teacher_model, teacher_pixels)
        if loss_cls.requires_classifier_heads:
            context.student_head = classifier_head(self.model)
            context.teacher_head = classifier_head(self.teacher_model)
        return context

    def _check_label_spaces(self, teacher: nn.Module | TeacherCache) -> None:
        student_labels = _num_labels(self.model)
        if isinstance(teacher, TeacherCache):
            teacher_labels = teacher.config.num_classes
        else:
            teacher_labels = _num_labels(teacher)
        if student_labels is not None and teacher_labels is not None and student_labels != teacher_labels:
            raise ValueError(
                f"The teacher predicts {teacher_labels} classes but the student {student_labels}. Logit "
                "distillation needs one label space: fine-tune the teacher on this dataset first "
                "(`distill_loss='ce'`, or `--loss ce` in examples/run_image_distill.py), or give the student a "
                f"{teacher_labels}-class head."
            )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = inputs.get("labels")
        if self.args.distill_channels_last:
            inputs = {
                k: v.contiguous(memory_format=torch.channels_last) if k.endswith("pixel_values") and v.ndim == 4 else v
                for k, v in inputs.items()
            }
        student_inputs = {k: v for k, v in inputs.items() if k not in _DISTILL_INPUT_KEYS}
        if (self.teacher_model is None and self.teacher_cache is None) or not model.training:
            # Evaluation (and CE-only training) runs the student alone: eval_loss is the student's CE.
            if labels is None:
                raise ValueError("The batch has no `labels`; the CE-only loss and evaluation need them.")
            logits = logits_of(model(**student_inputs))
            ce = self._cross_entropy(logits, labels)
            return (ce, {"logits": logits}) if return_outputs else ce

        needs_hidden = self.distill_loss.requires_hidden_states
        if needs_hidden:
            student_inputs["output_hidden_states"] = True
        if self.teacher_cache is not None:
            teacher_outputs = self._cached_teacher_outputs(inputs)
        else:
            teacher_outputs = self._teacher_forward(inputs, needs_hidden)
        loss_labels = labels
        if labels is not None and self.distill_loss.requires_labels:
            # Unlabelled samples (label < 0): the teacher labels them, for losses that split on the target class.
            loss_labels = torch.where(labels >= 0, labels, logits_of(teacher_outputs).argmax(-1))
        batch = DistillBatch(
            labels=loss_labels, epoch=float(self.state.epoch or 0.0), sample_index=inputs.get("sample_index")
        )
        strong_logits = None
        if self.distill_loss.requires_strong_view:
            batch.student_strong, batch.teacher_strong = self._strong_view(model, inputs, needs_hidden)
            strong_logits = logits_of(batch.student_strong)
        if isinstance(self.accelerator.unwrap_model(model), DistillationModule):
            student_outputs, loss_dict = model(distill_inputs=(teacher_outputs, batch), **student_inputs)
        else:
            if self._student_preacts is not None:
                student_outputs = self._student_preacts.run(model, **student_inputs)
            else:
                student_outputs = model(**student_inputs)
            loss_dict = self.distill_loss(student_outputs, teacher_outputs, batch)
        logits = logits_of(student_outputs)
        loss = self.args.distill_weight * loss_dict["loss"]
        ce = None
        if labels is not None:
            ce = self._cross_entropy(logits, labels)
            if strong_logits is not None:
                # Two views: CE sums over them, as MLKD's reference does (CE(weak) + CE(strong)).
                ce = ce + self._cross_entropy(strong_logits, labels)
            loss = loss + self.args.distill_ce_weight * ce
        self._record_metrics("train", ce, loss_dict)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _strong_view(self, model: nn.Module, inputs: dict[str, Any], needs_hidden: bool) -> tuple[Any, Any]:
        strong = inputs.get("strong_pixel_values")
        if strong is None:
            raise ValueError(
                f"Loss {self.args.distill_loss!r} needs a strongly augmented view of each batch "
                "(`strong_pixel_values`). examples/run_image_distill.py adds it for this loss; with your own data, "
                "build the batch transform "
                "with hfkd.data.make_transform_fn(..., strong_transforms=(...)) and collate with DistillationCollator."
            )
        views = {"pixel_values": strong, "teacher_pixel_values": inputs.get("teacher_strong_pixel_values")}
        teacher_strong = self._teacher_forward(views, needs_hidden)
        kwargs = {"output_hidden_states": True} if needs_hidden else {}
        return model(pixel_values=strong, **kwargs), teacher_strong

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean CE over the labelled samples, in float32 whatever the autocast dtype.

        A negative label (the `datasets` convention for a missing label) marks an unlabelled sample: it adds no CE,
        only the distillation loss, so the teacher supervises what nobody labelled. A micro-batch without labels
        has CE 0. Label smoothing follows `args.label_smoothing_factor`, as the Trainer would apply it.
        """
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

    def _cached_teacher_outputs(self, inputs: dict[str, Any]) -> Any:
        index = inputs.get("sample_index")
        if index is None:
            raise ValueError("Training from a teacher cache needs `sample_index` in each batch (add_sample_index).")
        epoch = math.floor(self.state.epoch or 0.0)
        logits = self.teacher_cache.teacher_logits(epoch, index.cpu()).to(self.args.device, non_blocking=True)
        return ImageClassifierOutput(logits=logits)

    def _teacher_forward(self, inputs: dict[str, Any], output_hidden_states: bool) -> Any:
        teacher = self.teacher_model
        # Re-assert eval mode every step: a user callback or `model.train()` on a container must not put the
        # teacher's BatchNorm/dropout into training mode.
        teacher.eval()
        pixel_values = inputs.get("teacher_pixel_values")
        if pixel_values is None:
            pixel_values = inputs["pixel_values"]
        kwargs = {"output_hidden_states": True} if output_hidden_states else {}
        with torch.no_grad(), self.accelerator.autocast():
            if self._teacher_preacts is not None and output_hidden_states:
                return self._teacher_preacts.run(teacher, pixel_values=pixel_values, **kwargs)
            return teacher(pixel_values=pixel_values, **kwargs)

    def _record_metrics(self, mode: str, ce: torch.Tensor | None, loss_dict: dict[str, torch.Tensor]) -> None:
        # Detached tensors, no .item(): reading a value here would synchronise the device every step.
        metrics = self._metrics[mode]
        if ce is not None:
            metrics["ce"].append(ce.detach())
        for name, value in loss_dict.items():
            metrics[name].append(value.detach().float())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self._metrics[mode]
        if metrics:
            prefix = "eval_distill/" if mode == "eval" else "distill/"
            names = sorted(metrics)
            means = torch.stack([torch.stack(metrics[name]).mean() for name in names])
            # Every process calls log() at the same step, so the mean across processes is a collective.
            means = self.accelerator.reduce(means, reduction="mean")
            for name, value in zip(names, means.tolist()):
                logs[prefix + name] = value
            metrics.clear()
        super().log(logs, start_time)

    def distill_config(self) -> dict[str, Any]:
        """What `distill_config.json` records: the loss, its resolved kwargs, the weights and the teacher."""
        args, teacher = self.args, self.teacher_model
        teacher_info = None
        if self.teacher_cache is not None:
            cache = self.teacher_cache.config
            teacher_info = {"name_or_path": cache.teacher, "cache": args.teacher_cache_dir, "top_k": cache.top_k,
                            "num_labels": cache.num_classes}  # fmt: skip
        elif teacher is not None:
            teacher_info = {
                "name_or_path": teacher_id(teacher, args.teacher_model_name_or_path),
                "revision": args.teacher_model_revision,
                "commit": getattr(getattr(teacher, "config", None), "_commit_hash", None),
                "num_labels": _num_labels(teacher),
            }
        return {
            "hfkd_version": __version__,
            "distill_loss": args.distill_loss,
            "distill_loss_kwargs": self.distill_loss.hparams() if self.distill_loss is not None else {},
            "distill_ce_weight": args.distill_ce_weight,
            "distill_weight": args.distill_weight,
            "teacher": teacher_info,
            "recipe": self.recipe_path,
            "data": self.data_info,
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        wrapper = self.accelerator.unwrap_model(self.model)
        if isinstance(wrapper, DistillationModule):
            # The bare student, loadable with AutoModelForImageClassification; adapters beside it.
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                student_state = None
                if state_dict is not None:
                    student_state = {
                        k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")
                    }
                wrapper.student.save_pretrained(output_dir, state_dict=student_state)
                adapters = wrapper.adapter_state_dict()
                if adapters:
                    save_file(adapters, os.path.join(output_dir, ADAPTERS_NAME), metadata={"format": "pt"})
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        else:
            super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            with open(os.path.join(output_dir, DISTILL_CONFIG_NAME), "w", encoding="utf-8") as f:
                json.dump(self.distill_config(), f, indent=2, sort_keys=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(wrapper, DistillationModule):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, wrapper.student)
        if not wrapper.adapter_state_dict():
            return
        path = os.path.join(resume_from_checkpoint, ADAPTERS_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"Checkpoint {resume_from_checkpoint!r} has no {ADAPTERS_NAME}, which loss "
                f"{self.args.distill_loss!r} needs to resume. Resume from a checkpoint of a run with this loss."
            )
        wrapper.distill_loss.load_state_dict(load_file(path, device=str(self.args.device)))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student; a timm student's final folder also loads with `timm.create_model("local-dir:...")`."""
        super().save_model(output_dir, _internal_call=_internal_call)
        folder = output_dir if output_dir is not None else self.args.output_dir
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        # Only the final folder: resume loads checkpoints non-strictly, so their keys keep transformers' layout.
        if self.args.should_save and getattr(config, "model_type", None) == "timm_wrapper":
            from .models import make_timm_loadable

            make_timm_loadable(folder)

    @torch.no_grad()
    def evaluate_teacher(self, eval_dataset: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Top-1/top-5 accuracy of the teacher on the evaluation set (its own pixel tensor when it has one)."""
        if self.teacher_model is None:
            raise ValueError("There is no teacher to evaluate (distill_loss='ce').")
        dataloader = self.get_eval_dataloader(eval_dataset)
        predictions, references = [], []
        for inputs in tqdm(dataloader, desc="Teacher evaluation", disable=not self.is_local_process_zero()):
            inputs = self._prepare_inputs(inputs)
            logits = logits_of(self._teacher_forward(inputs, output_hidden_states=False))
            ranked, labels = self.accelerator.gather_for_metrics((top_k_indices(logits), inputs["labels"]))
            predictions.append(ranked.cpu())
            references.append(labels.cpu())
        result = compute_accuracy_metrics(
            EvalPrediction(predictions=torch.cat(predictions).numpy(), label_ids=torch.cat(references).numpy())
        )
        return {f"{metric_key_prefix}_{name}": value for name, value in result.items()}

    def latest_eval_metrics(self) -> dict[str, float] | None:
        """The most recent logged evaluation metrics (`eval_accuracy`, ...), if any."""
        for entry in reversed(self.state.log_history):
            if "eval_accuracy" in entry:
                return entry
        return None

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
    ) -> None:
        """Write `output_dir/README.md`: metadata, results next to the teacher's, loss, kwargs and citation.

        Runs on the main process only. `student_metrics` defaults to the latest evaluation; `teacher_metrics`
        and `baseline_metrics` (the CE-only student) are shown when given.
        """
        if not self.is_world_process_zero():
            return
        from .model_card import build_model_card, training_hyperparameters

        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        student_name = finetuned_from or getattr(config, "_name_or_path", None) or "student"
        if is_timm is None:
            is_timm = getattr(config, "model_type", None) == "timm_wrapper"
        distill = self.distill_config()
        teacher = distill["teacher"] or {}
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        build_model_card(
            output_dir=self.args.output_dir,
            model_name=model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            student_name=student_name,
            teacher_name=teacher.get("name_or_path"),
            teacher_revision=teacher.get("revision"),
            loss_key=distill["distill_loss"],
            loss_kwargs=distill["distill_loss_kwargs"],
            paper=getattr(self.distill_loss, "paper", None),
            ce_weight=self.args.distill_ce_weight,
            distill_weight=self.args.distill_weight if self.distill_loss is not None else 0.0,
            dataset_name=dataset if isinstance(dataset, str) else (dataset[0] if dataset else None),
            dataset_config=dataset_args if isinstance(dataset_args, str) else None,
            student_metrics=student_metrics if student_metrics is not None else self.latest_eval_metrics(),
            teacher_metrics=teacher_metrics,
            baseline_metrics=baseline_metrics,
            hyperparameters=training_hyperparameters(self.args),
            is_timm=is_timm,
            hub_model_id=self.args.hub_model_id if self.args.push_to_hub else None,
            license=license,
            extra_tags=[t for t in extra_tags if t not in ("hfkd", "knowledge-distillation")],
        )
