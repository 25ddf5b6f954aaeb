"""Teachers: one interface, `teacher(batch, epoch) -> TeacherOutputs`, and the kinds the trainer never tells apart.

- `base`: `Teacher` and `TeacherOutputs`, what the trainer needs of a teacher;
- `live`: `LiveTeacher`, a frozen model run under `no_grad` and the student's autocast (and how it is loaded);
- `deepspeed`: `DeepSpeedTeacher`, a live teacher whose parameters sit in a ZeRO-3 inference engine;
- `cached`: `CachedTeacher`, outputs read from a teacher cache (`cache/`: build, store, replay, checks);
- `ensemble` and `combine`: several teachers as one, and the rules (and checks) of how their logits combine;
- `build`: `build_teacher`, from what a trainer is given to one of the above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports

_EXPORTS = {
    "Teacher": "hfkd.teachers.base",
    "TeacherOutputs": "hfkd.teachers.base",
    "LiveTeacher": "hfkd.teachers.live",
    "load_teacher": "hfkd.teachers.live",
    "DeepSpeedTeacher": "hfkd.teachers.deepspeed",
    "CachedTeacher": "hfkd.teachers.cached",
    "EnsembleTeacher": "hfkd.teachers.ensemble",
    "build_teacher": "hfkd.teachers.build",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from hfkd.teachers.base import Teacher, TeacherOutputs  # noqa: F401
    from hfkd.teachers.build import build_teacher  # noqa: F401
    from hfkd.teachers.cached import CachedTeacher  # noqa: F401
    from hfkd.teachers.deepspeed import DeepSpeedTeacher  # noqa: F401
    from hfkd.teachers.ensemble import EnsembleTeacher  # noqa: F401
    from hfkd.teachers.live import LiveTeacher, load_teacher  # noqa: F401
