"""hfkd: knowledge distillation for image models on the Hugging Face stack.

The public API is exported lazily (PEP 562): `import hfkd` loads none of torch's data stack, `datasets`,
`torchvision` or the submodules; each name below is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports
from hfkd.version import __version__

_EXPORTS = {
    "DistillationArguments": "hfkd.training.arguments",
    "DistillationTrainer": "hfkd.training.trainer",
    "DistillationLoss": "hfkd.losses",
    "LossNeeds": "hfkd.losses",
    "register_loss": "hfkd.losses",
    "create_loss": "hfkd.losses",
    "list_losses": "hfkd.losses",
    "Teacher": "hfkd.teachers.base",
    "TeacherOutputs": "hfkd.teachers.base",
    "LiveTeacher": "hfkd.teachers.live",
    "DeepSpeedTeacher": "hfkd.teachers.deepspeed",
    "CachedTeacher": "hfkd.teachers.cached",
    "EnsembleTeacher": "hfkd.teachers.ensemble",
    "DistillationCollator": "hfkd.data.collator",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names above load on first use
    from hfkd.data.collator import DistillationCollator  # noqa: F401
    from hfkd.losses import DistillationLoss, LossNeeds, create_loss, list_losses, register_loss  # noqa: F401
    from hfkd.teachers.base import Teacher, TeacherOutputs  # noqa: F401
    from hfkd.teachers.cached import CachedTeacher  # noqa: F401
    from hfkd.teachers.deepspeed import DeepSpeedTeacher  # noqa: F401
    from hfkd.teachers.ensemble import EnsembleTeacher  # noqa: F401
    from hfkd.teachers.live import LiveTeacher  # noqa: F401
    from hfkd.training.arguments import DistillationArguments  # noqa: F401
    from hfkd.training.trainer import DistillationTrainer  # noqa: F401
