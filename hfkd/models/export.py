"""Write a timm student so that it loads both in transformers and in `timm.create_model("local-dir:...")`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel
from transformers.utils import logging

from hfkd.models.loading import _TIMM_PREFIX, _is_timm_config, _timm_pretrained_cfg
from hfkd.utils.errors import UsageError

logger = logging.get_logger(__name__)


def save_student(model: PreTrainedModel, output_dir: str, image_processor: Any | None = None) -> None:
    """
    Save a student with `save_pretrained` (safetensors) plus its image processor; timm students are also made
    loadable by `timm.create_model("local-dir:" + output_dir, pretrained=True)` (see [`make_timm_loadable`]).

    Args:
        model (`PreTrainedModel`): The student.
        output_dir (`str`): Target folder.
        image_processor (*optional*): Saved beside the model. A `TimmWrapperImageProcessor` is not saved: its
            settings live in config.json (`pretrained_cfg`).
    """
    model.save_pretrained(output_dir)
    if image_processor is not None and type(image_processor).__name__ != "TimmWrapperImageProcessor":
        image_processor.save_pretrained(output_dir)
    if getattr(model.config, "model_type", None) == "timm_wrapper":
        make_timm_loadable(output_dir)


def _read_safetensors(folder: Path) -> tuple[dict[str, Any], list[Path]]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single), []
    if index.is_file():
        shards = sorted({folder / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
        tensors: dict[str, Any] = {}
        for shard in shards:
            tensors.update(load_file(shard))
        return tensors, [index, *shards]
    found = sorted(p.name for p in folder.iterdir())
    raise UsageError(
        f"No model.safetensors (or model.safetensors.index.json) in {str(folder)!r} (found {found}). Save the model "
        "with `save_pretrained` in safetensors format; pickle weights are not converted."
    )


def make_timm_loadable(output_dir: str) -> None:
    """
    Make a folder saved from a `TimmWrapperForImageClassification` also load with
    `timm.create_model("local-dir:" + output_dir, pretrained=True)`, keeping it loadable by
    `AutoModelForImageClassification.from_pretrained` and `pipeline("image-classification")`. A `TimmWrapperModel`
    backbone (no head) is written with `num_classes` 0, so that timm builds it without one too.

    transformers writes `model_args: null` (timm's loader calls `.get` on it), no `pretrained_cfg` for a random-init
    model (timm then reads the whole config.json as a pretrained cfg and fails on keys like `architectures`; the
    transformers image processor needs it too), and weight names prefixed with `timm_model.` (timm's strict load
    fails). This rewrites config.json with `model_args` (`{}` or the real ones), `num_classes` and a
    `pretrained_cfg`, and stores unprefixed keys in one `model.safetensors`, the layout of timm's own Hub exports;
    transformers re-adds the prefix when it loads (its `timm_wrapper` weight conversion). Idempotent.

    Args:
        output_dir (`str`): A folder written by `TimmWrapperForImageClassification.save_pretrained`.

    Raises:
        `ValueError`: The folder has no config.json, is not a timm checkpoint, or has no safetensors weights.
    """
    folder = Path(output_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UsageError(f"No config.json in {output_dir!r}. Call `model.save_pretrained({output_dir!r})` first.")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not _is_timm_config(config):
        raise UsageError(
            f"{output_dir!r} holds a {config.get('model_type')!r} model, not a timm one; only models loaded through "
            "TimmWrapperForImageClassification (timm names and `timm/...` ids) can be made timm-loadable."
        )
    num_classes = config.get("num_classes") or len(config.get("label_names") or []) or None
    if config.get("architectures") == ["TimmWrapperModel"]:  # a backbone: timm's num_classes=0, no head
        num_classes = 0
    if num_classes is None:
        raise UsageError(f"config.json in {output_dir!r} has no num_classes; re-save the model with save_pretrained.")
    pretrained_cfg = dict(config.get("pretrained_cfg") or _timm_pretrained_cfg(config["architecture"]))
    if pretrained_cfg.get("num_classes") not in (None, num_classes):
        # The source checkpoint's class names describe a head this folder no longer has.
        for key in ("label_names", "label_descriptions", "label_offset"):
            pretrained_cfg.pop(key, None)
    pretrained_cfg["num_classes"] = num_classes
    config.update(num_classes=num_classes, model_args=config.get("model_args") or {}, pretrained_cfg=pretrained_cfg)

    tensors, stale = _read_safetensors(folder)
    tensors = {k.removeprefix(_TIMM_PREFIX): v.contiguous() for k, v in tensors.items()}
    tmp_file = folder / "model.safetensors.tmp"
    save_file(tensors, tmp_file, metadata={"format": "pt"})
    os.replace(tmp_file, folder / "model.safetensors")
    for path in stale:
        path.unlink()
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info(f"Made {output_dir!r} loadable by timm.create_model('local-dir:{output_dir}', pretrained=True).")
