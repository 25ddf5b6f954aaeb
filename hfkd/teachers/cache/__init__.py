"""The teacher cache: a teacher's (or an ensemble's) outputs on every epoch's augmented view of every training image,
built once and replayed so that training never runs the teacher (as FKD does).

- `store`: the layout on disk, the views it replays, what it was built from, and checked reading (`TeacherCache`);
- `build`: building it shard by shard, split over processes, resumable (`build_teacher_cache`);
- `replay`: the training transform that gives the student exactly the cached views (`ReplayTransform`);
- `check`: refusing a run whose data, selection or teacher is not the cache's.

Its command is `hfkd cache` (`hfkd.commands.cache`; `python -m hfkd.teacher_cache` is an alias).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports

_EXPORTS = {
    "TeacherCache": "hfkd.teachers.cache.store",
    "CacheConfig": "hfkd.teachers.cache.store",
    "build_teacher_cache": "hfkd.teachers.cache.build",
    "ReplayTransform": "hfkd.teachers.cache.replay",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from hfkd.teachers.cache.build import build_teacher_cache  # noqa: F401
    from hfkd.teachers.cache.replay import ReplayTransform  # noqa: F401
    from hfkd.teachers.cache.store import CacheConfig, TeacherCache  # noqa: F401
