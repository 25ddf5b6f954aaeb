"""Which commit of a Hub repository a model was loaded from, for `distill_config.json` and the card.

transformers 5 no longer records it on the loaded config (the private `config._commit_hash` stays unset since); the
local Hub cache still tells it, offline: a file read at a revision lies in `snapshots/<commit>/`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from hfkd.utils.local_names import is_local_path


def hub_commit(
    repo_id: str | None, revision: str | None = None, *, cache_dir: str | None = None, filename: str = "config.json"
) -> str | None:
    """The commit `revision` (a branch, tag or commit; `None`: the default branch) of the Hub repository `repo_id`
    pointed to when its `filename` was downloaded into the Hub cache; `None` for a local folder or a file not in the
    cache."""
    if not repo_id or is_local_path(repo_id):
        return None
    try:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    except ValueError:  # not a repository id (huggingface_hub's HFValidationError is a ValueError)
        return None
    if not isinstance(path, str):  # not cached, or cached as missing
        return None
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
