"""Local paths never leave the machine: what hfkd writes names a local model, dataset or recipe by its folder name.

Model cards, `distill_config.json`, `training_args.bin` and the teacher cache's config are uploaded with a model or
shared with a team; an absolute path in them says who ran what where, and means nothing elsewhere. `neutral_name`
keeps Hub ids and timm names as they are and reduces a local path to its last component.
"""

from __future__ import annotations

import os
import re
from typing import Any

_FILE_SUFFIX = re.compile(r"\.(arrow|csv|gz|json|jsonl|parquet|tar|tsv|txt|yaml|yml|zip)$", re.IGNORECASE)


def is_local_path(name: str) -> bool:
    """Whether `name` is a path on this machine rather than a Hub id or a name (an existing folder wins, as it does
    for `from_pretrained` and `load_dataset`)."""
    if name.startswith(("local-dir:", "/", "./", "../", "~", "\\")) or "\\" in name or name in (".", ".."):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", name) or _FILE_SUFFIX.search(name):
        return True
    return os.path.exists(os.path.expanduser(name))


def neutral_name(name: Any) -> Any:
    """A local path as its last component (`/data/runs/teacher-ft/` -> `teacher-ft`); anything else unchanged."""
    if not isinstance(name, str) or not name or not is_local_path(name):
        return name
    path = name.removeprefix("local-dir:").rstrip("/\\")
    return os.path.basename(os.path.expanduser(path)) or "local"


def neutral_text(text: Any, *paths: str | None) -> Any:
    """`text` with each of the local `paths` in it replaced by its `neutral_name`."""
    if not isinstance(text, str):
        return text
    for path in sorted({p for p in paths if isinstance(p, str) and p and is_local_path(p)}, key=len, reverse=True):
        for form in {path, os.path.abspath(os.path.expanduser(path))}:
            text = text.replace(form, neutral_name(path))
    return text


def recipe_name(path: str | None) -> str | None:
    """A recipe by its place under `recipes/` (`recipes/cifar100/kd/x.yaml`) when it has one, else its file name."""
    if not path:
        return path
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[parts.index("recipes") :]) if "recipes" in parts else os.path.basename(path)
