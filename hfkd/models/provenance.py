"""Where a teacher's weights came from: the record `python -m hfkd.convert` writes into a converted teacher's
config.json (`hfkd_provenance`), read back for `distill_config.json`, the model card and the report.

Apart from `hfkd.convert` so that reading a record (every run with a teacher does) does not import the converter,
which `python -m hfkd.convert` must run as its own module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging

from hfkd.utils.hashing import weights_sha256

logger = logging.get_logger(__name__)


PROVENANCE_KEY = "hfkd_provenance"


def teacher_provenance(model_or_folder: Any) -> dict[str, Any] | None:
    """Where a teacher's weights came from, as `convert_checkpoint` recorded it; `None` when nothing is recorded.

    The record is only returned while the weights are still the converted ones (`weights_sha256`): a folder or model
    fine-tuned (or cast to another dtype) since then gets `None` and a warning, so a retrained network never passes
    for the released teacher. A bare config is taken at its word.

    Args:
        model_or_folder: A local folder, a loaded model (anything with a `config`, before it is cast), or its config;
            a name that is not a local folder (a Hub id, a timm name) gives `None`.

    Returns:
        `dict` or `None`: `kind` (`"released_checkpoint"`), `release`, `reference_arch`, `architecture`,
        `source_file`, `source_sha256`, `checkpoint_epoch` / `checkpoint_top1` (the test top-1 in percent) when the
        file had them, `converted_on`, `converted_with` and `weights_sha256`.
    """
    weights: Any = model_or_folder if isinstance(model_or_folder, nn.Module) else None
    if isinstance(model_or_folder, (str, os.PathLike)):
        folder = Path(model_or_folder)
        if not (folder / "config.json").is_file():
            return None
        found = json.loads((folder / "config.json").read_text(encoding="utf-8")).get(PROVENANCE_KEY)
        weights = folder / "model.safetensors"
    else:
        found = getattr(getattr(model_or_folder, "config", model_or_folder), PROVENANCE_KEY, None)
    if not isinstance(found, dict) or "kind" not in found:
        return None
    if isinstance(weights, Path):
        weights = load_file(weights) if weights.is_file() else {}
    if weights is not None and weights_sha256(weights) != found.get("weights_sha256"):
        logger.warning(
            f"The weights differ from the {found.get('reference_arch')} checkpoint they were converted from "
            "(trained or cast since?); not reporting them as the released teacher."
        )
        return None
    return dict(found)


def describe_provenance(provenance: dict[str, Any] | None) -> str | None:
    """One phrase for a model card or report: `"released teacher (cifar_teachers.tar resnet32x4)"`, else `None`."""
    if not provenance or provenance.get("kind") != "released_checkpoint":
        return None
    return f"released teacher ({provenance.get('release')} {provenance.get('reference_arch')})"
