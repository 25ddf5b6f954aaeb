"""Before anything loads: is a model on this machine or reachable, and what label space does its config declare.

Without network, `from_pretrained` retries for a minute and ends in a long `OSError`; `check_available` answers in
one line at once: a model that is neither a local folder nor in the local Hugging Face cache cannot be fetched
from an unreachable (or offline) Hub, so the run stops, naming the model, where it was looked for and what to do.
`config_num_labels` reads a model's class count from its config alone, so a teacher of another label space is
refused before any weights load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import urllib.error
import urllib.request
from typing import Any

from huggingface_hub import constants, try_to_load_from_cache
from timm.models import get_pretrained_cfg
from transformers import AutoConfig

from hfkd.models.loading import ModelSpec
from hfkd.models.smp import REFERENCE_NETWORKS
from hfkd.utils.errors import UsageError

_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in names)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers at all (one request, any HTTP status counts), unless offline mode is set."""
    if hub_offline():
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def hub_repo(spec: ModelSpec) -> str | None:
    """The Hub repo a spec loads from, or None (a local folder, a random-init timm architecture)."""
    if spec.kind in ("hub", "timm_hub"):
        return spec.source
    if spec.kind in ("timm_arch", "smp"):  # a reference segmentation network: its timm encoder's ImageNet weights
        name = spec.source if spec.kind == "timm_arch" else REFERENCE_NETWORKS[spec.source][1].removeprefix("tu-")
        cfg = get_pretrained_cfg(name)
        return cfg.hf_hub_id if cfg is not None and (cfg.hf_hub_id or "").count("/") else None
    return None


def check_available(spec: ModelSpec, role: str, *, pretrained: bool = True) -> ModelSpec:
    """`spec`, loadable now: a local folder, a random-init architecture, a cached Hub model (then loaded from the
    cache without network when the Hub is unreachable) or a reachable Hub model; else a one-line ValueError."""
    if spec.kind == "local" or (spec.kind in ("timm_arch", "smp") and not pretrained):
        return spec
    repo = hub_repo(spec)
    if repo is None:
        return spec
    cached = isinstance(try_to_load_from_cache(repo, "config.json", revision=spec.revision), str)
    if hub_reachable():
        return spec
    if cached:
        return dataclasses.replace(spec, local_files_only=True)
    why = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else f"unreachable ({constants.ENDPOINT})"
    flag = "--student" if role == "student" else "--teacher"
    raise UsageError(
        f"The {role} {spec.name!r} ({repo}) is neither a local folder nor in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and the Hub is {why}. Download it where there is network (`hf download {repo} "
        f"--local-dir <folder>`) and pass {flag} <folder>, or copy the cache here."
    )


def config_num_labels(spec: ModelSpec) -> int | None:
    """The number of classes a model's config declares, read without its weights (None when unknown)."""
    if spec.kind == "local":
        with open(os.path.join(spec.source, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        labels = config.get("num_labels") or config.get("num_classes") or len(config.get("id2label") or {})
        return labels or None
    if spec.kind == "timm_arch":
        cfg = get_pretrained_cfg(spec.source)
        return getattr(cfg, "num_classes", None)
    if spec.kind in ("smp", "torchvision"):
        return None  # a reference network is built with the data's classes
    local = {"local_files_only": True} if spec.local_files_only else {}
    return getattr(AutoConfig.from_pretrained(spec.source, revision=spec.revision, **local), "num_labels", None)


def model_config(spec: ModelSpec) -> dict[str, Any]:
    """What a model's config says (`architectures`, `model_type`, ...), read without its weights: its config.json,
    the Hub config (cached or fetched), `{"model_type": "timm_wrapper"}` for a timm model and
    `{"model_type": "hfkd_smp"}` for a reference segmentation network."""
    if spec.kind == "local":
        with open(os.path.join(spec.source, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    if spec.is_timm or spec.kind == "timm_arch":
        return {"model_type": "timm_wrapper"}
    if spec.kind == "smp":
        return {"model_type": "hfkd_smp"}
    if spec.kind == "torchvision":
        return {"model_type": "hfkd_torchvision_detection", "architectures": ["TorchvisionForObjectDetection"]}
    local = {"local_files_only": True} if spec.local_files_only else {}
    return AutoConfig.from_pretrained(spec.source, revision=spec.revision, **local).to_dict()
