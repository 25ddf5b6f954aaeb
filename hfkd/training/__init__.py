"""Training: the arguments, the trainer, and what a step and a run need around them.

- `arguments`: `DistillationArguments`, `TrainingArguments` plus the teacher, the loss and the references'
  optimisation, checked when built;
- `trainer`: `DistillationTrainer`, whose `compute_loss` is teacher outputs -> student and loss -> total;
- `student_module`: `DistillationModule`, the student and the loss in one module (what DDP and the optimiser see);
- `callbacks` (the non-finite guard, the epoch callback), `checkpoints` (complete checkpoints, resuming, saving),
  `ema` (the student's weight average), `optimization` and `schedulers` (the references' optimisers and lr
  schedules), `accumulation` (exact gradient accumulation), `evaluation` (every image scored, the teacher's
  accuracy), `streaming` (the trainer's side of streamed data), `reporting` (the `report_to` check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports

_EXPORTS = {
    "DistillationArguments": "hfkd.training.arguments",
    "DistillationTrainer": "hfkd.training.trainer",
    "DistillationModule": "hfkd.training.student_module",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from hfkd.training.arguments import DistillationArguments  # noqa: F401
    from hfkd.training.student_module import DistillationModule  # noqa: F401
    from hfkd.training.trainer import DistillationTrainer  # noqa: F401
