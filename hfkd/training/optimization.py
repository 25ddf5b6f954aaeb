"""Optimisation for `DistillationTrainer`: what the references' training code does that the Trainer does not.

A mixin of `hfkd.trainer.DistillationTrainer`:

- weight decay on every parameter (`distill_decay_all_parameters`), as mdistiller's and RepDistiller's optimisers,
  or on no 1-D parameter (`distill_no_decay_1d`), as DIST's and timm's;
- a timm optimiser by name (`distill_timm_optimizer`: RMSpropTF, LAMB, ...), over the same parameter groups;
- the references' multi-step learning-rate decay, exact per optimiser step (`distill_lr_milestones`), and DIST's
  step schedule with its stair warm-up (`distill_lr_decay_epochs`);
- an EMA of the student's weights (`distill_ema`, `hfkd.ema`), which evaluation uses.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from hfkd.training.ema import StudentEMA
from hfkd.training.schedulers import get_multistep_schedule, optimizer_steps_per_epoch, step_decay_lambda
from hfkd.utils.errors import UsageError


class OptimizationMixin:
    """The optimiser and scheduler overrides of `DistillationTrainer` (see the module docstring)."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Every parameter with `distill_decay_all_parameters` (mdistiller's and RepDistiller's optimiser groups),
        the parameters of 2 or more dimensions with `distill_no_decay_1d` (DIST's and timm's `filter_bias_and_bn`:
        no decay on biases and on every norm weight), else the Trainer's choice (no decay on biases and LayerNorm
        weights; BatchNorm weights are decayed)."""
        if self.args.distill_decay_all_parameters:
            return [name for name, _ in model.named_parameters()]
        if self.args.distill_no_decay_1d:
            return [name for name, parameter in model.named_parameters() if parameter.ndim > 1]
        return super().get_decay_parameter_names(model)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser, or the timm optimiser `distill_timm_optimizer` (`timm.optim.create_optimizer_v2`)
        over the trainer's model (student and any trainable loss parameters), with the same decay rule."""
        if self.args.distill_timm_optimizer is None or self.optimizer is not None:
            return super().create_optimizer(model)
        decay = set(self.get_decay_parameter_names(model or self.model))
        named = [(n, p) for n, p in (model or self.model).named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        self.optimizer = create_optimizer_v2(
            [group for group in groups if group["params"]],
            opt=self.args.distill_timm_optimizer,
            lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            **self.args.distill_timm_optimizer_kwargs,
        )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The references' multi-step decay (`distill_lr_milestones`) or DIST's step schedule
        (`distill_lr_decay_epochs`) when one is set, else the Trainer's schedule."""
        args = self.args
        own_schedule = args.distill_lr_milestones is not None or args.distill_lr_decay_epochs is not None
        given = self.lr_scheduler is not None and self.lr_scheduler is not getattr(self, "_own_lr_scheduler", None)
        if given or not own_schedule:
            return super().create_scheduler(num_training_steps, optimizer)
        # Built anew at each `train()`, as the Trainer rebuilds the schedules it creates (a new run's optimizer).
        optimizer = optimizer or self.optimizer
        steps_per_epoch = self._schedule_steps_per_epoch()
        if args.distill_lr_milestones is not None:
            start = args.distill_lr_warmup_lr / args.learning_rate if args.learning_rate else 0.0
            self.lr_scheduler = get_multistep_schedule(
                optimizer, args.distill_lr_milestones, args.distill_lr_gamma, steps_per_epoch,
                warmup_steps=args.get_warmup_steps(num_training_steps), warmup_factor=start,
            )  # fmt: skip
        else:
            factor = step_decay_lambda(
                args.distill_lr_decay_epochs,
                args.distill_lr_gamma,
                steps_per_epoch,
                args.distill_lr_warmup_epochs,
                args.distill_lr_warmup_lr / args.learning_rate if args.learning_rate else 1.0,
            )
            self.lr_scheduler = LambdaLR(optimizer, factor)
        self._own_lr_scheduler = self.lr_scheduler
        return self.lr_scheduler

    def _schedule_steps_per_epoch(self) -> float:
        """Optimiser steps per epoch, as the references count them (1 when the schedule is given in steps)."""
        if self.args.distill_lr_milestones_unit == "steps":
            return 1.0  # a milestone m decays the lr from optimiser step m on
        if not hasattr(self.train_dataset, "__len__"):
            raise UsageError(
                "`distill_lr_milestones` / `distill_lr_decay_epochs` count epochs, which needs a training dataset "
                "with a length; for streamed data give them in steps (`distill_lr_milestones_unit='steps'`)."
            )
        # DeiT's repeated copies keep RASampler's epoch, in full batches (`copies_sampler`).
        sampler = self.copies_sampler(self.train_dataset)
        return optimizer_steps_per_epoch(
            len(self.train_dataset) if sampler is None else len(sampler),
            self.args.per_device_train_batch_size,
            self.args.world_size,
            self.args.gradient_accumulation_steps,
            self.args.dataloader_drop_last or sampler is not None,
        )

    def _build_ema(self, student: nn.Module) -> StudentEMA | None:
        """The weight average of `student` (the bare one) when `distill_ema` asks for one."""
        if not self.args.distill_ema:
            return None
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise UsageError(
                "--distill_ema keeps a whole copy of the student, which DeepSpeed and FSDP shard: train without "
                "--distill_ema there, or with plain DDP."
            )
        ema = StudentEMA(student, self.args.distill_ema_decay, self.args.distill_ema_warmup)
        self.add_callback(ema)
        return ema

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """`Trainer.evaluate`, on the student's weight average when there is one (`distill_ema`)."""
        if self.ema is None:
            return super().evaluate(*args, **kwargs)
        with self.ema.swapped_in():
            return super().evaluate(*args, **kwargs)
