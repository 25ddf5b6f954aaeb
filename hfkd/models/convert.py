"""Convert the released CIFAR-100 teacher checkpoints of RepDistiller / mdistiller into folders `--teacher` loads.

Every CIFAR-100 row of the MDistiller, DIST and Streamlined KD tables distils from the same six released teachers
(`cifar_teachers.tar`: `resnet32x4`, `wrn_40_2`, `vgg13`, `resnet56`, `resnet110`, `ResNet50`, each a
`<arch>_vanilla/ckpt_epoch_240.pth` written by RepDistiller's `train_teacher.py`). hfkd's CIFAR networks use the
reference module names, so the weights load unchanged (`hfkd convert`, `hfkd.commands.convert`). The folder holds
hfkd's timm network (safetensors), the CIFAR-100 class names and its image config, and loads with
`--teacher teachers/resnet32x4`, `AutoModelForImageClassification.from_pretrained` and timm's `local-dir:`. Its
config.json records where the weights came from (`hfkd_provenance`), which `teacher_provenance` reads back.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import timm
import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from hfkd.models.export import save_student
from hfkd.models.loading import ModelSpec, load_image_classifier
from hfkd.models.provenance import PROVENANCE_KEY
from hfkd.utils.errors import UsageError
from hfkd.utils.hashing import weights_sha256
from hfkd.version import __version__

logger = logging.get_logger(__name__)


RELEASE_NAME = "cifar_teachers.tar"


# The released teachers: RepDistiller / mdistiller model-dict name -> hfkd's timm architecture.
TEACHER_ARCHS: dict[str, str] = {
    "resnet32x4": "cifar_resnet32x4",
    "wrn_40_2": "cifar_wrn_40_2",
    "vgg13": "cifar_vgg13",
    "resnet56": "cifar_resnet56",
    "resnet110": "cifar_resnet110",
    "ResNet50": "cifar_resnet50",
}


# CIFAR-100 fine labels in label-index order (the `fine_label_names` of the dataset's `meta` file).
CIFAR100_FINE_LABELS: tuple[str, ...] = tuple(
    (
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
        "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
        "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard "
        "lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear "
        "pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark "
        "shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone "
        "television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
    ).split()
)


def resolve_arch(arch: str) -> tuple[str, str]:
    """`(reference_name, hfkd_name)` of a released teacher, from either spelling (`resnet32x4`, `cifar_resnet32x4`).

    Raises:
        `ValueError`: Not one of the released teachers; the message lists both spellings of each.
    """
    for reference, name in TEACHER_ARCHS.items():
        if arch.strip().lower() in (reference.lower(), name):
            return reference, name
    accepted = ", ".join(f"{reference} (= {name})" for reference, name in TEACHER_ARCHS.items())
    raise UsageError(f"Unknown --arch {arch!r}: the released CIFAR-100 teachers are {accepted}. Pass one of these.")


def _load_error(path: Path, error: Exception) -> ValueError:
    text = str(error)
    if needs_code := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return ValueError(
            f"{path.name} is not a plain weights file: unpickling it would run code ({needs_code.group(1)}). hfkd "
            "reads checkpoints with torch.load(weights_only=True) only; if you trust the file, re-save its weights "
            "with `torch.save({'model': torch.load(path, weights_only=False)['model']}, 'weights.pth')` and convert "
            "that."
        )
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    detail = detail.group(1).strip() if detail else (text.splitlines() or ["empty file"])[0][:200]
    return ValueError(
        f"{path.name} is not a PyTorch checkpoint ({type(error).__name__}: {detail}). Pass the ckpt_epoch_240.pth "
        "of a teacher folder from cifar_teachers.tar (or any torch.save'd state dict)."
    )


def _scalar(value: Any) -> int | float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return round(value, 4) if isinstance(value, float) else value


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a reference checkpoint with `torch.load(weights_only=True)`, on CPU.

    Accepts `{"model": state_dict, ...}` (RepDistiller's layout; `"state_dict"` also works) or a bare state dict, and
    strips a `module.` prefix (DataParallel). Returns the state dict and what the file says about itself (`epoch`,
    top-1 `accuracy` / `best_acc`, as plain numbers).

    Raises:
        `ValueError`: The file is missing, needs code to unpickle, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Checkpoint {str(path)!r} does not exist or is not a file; pass the path of a .pth file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever torch.load raises, the file is not a checkpoint it can read safely
        raise _load_error(path, error) from None
    info: dict[str, Any] = {}
    weights = payload.get("model", payload.get("state_dict")) if isinstance(payload, dict) else None
    if isinstance(weights, dict):
        found = {"epoch": payload.get("epoch"), "top1": payload.get("accuracy", payload.get("best_acc"))}
        info = {key: _scalar(value) for key, value in found.items() if _scalar(value) is not None}
        payload = weights
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        shown = sorted(map(str, payload))[:8] if isinstance(payload, dict) else type(payload).__name__
        raise UsageError(
            f"{path.name} holds no state dict (found {shown}); expected {{'model': state_dict}} or a bare state dict "
            "of tensors, as RepDistiller's train_teacher.py saves."
        )
    if all(key.startswith("module.") for key in payload):
        payload = {key.removeprefix("module."): value for key, value in payload.items()}
    return payload, info


@cache
def _expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=len(CIFAR100_FINE_LABELS))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _mismatches(state_dict: dict[str, torch.Tensor], name: str) -> list[str]:
    """What keeps `state_dict` from loading into `name`: one phrase per kind of problem, none if it loads."""
    expected = _expected_shapes(name)
    found = {
        # Checkpoints from before PyTorch 0.4.1 have no BatchNorm step counters; eval never reads them.
        "missing key(s)": [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")],
        "unexpected key(s)": [k for k in state_dict if k not in expected],
        "wrong shape(s)": [
            f"{k}: checkpoint {tuple(v.shape)} vs {expected[k]}"
            for k, v in state_dict.items()
            if k in expected and tuple(v.shape) != expected[k]
        ],
    }
    return [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' * (len(v) > 3)})" for what, v in found.items() if v]


def check_state_dict(state_dict: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Check `state_dict` key by key against the teacher `arch` and return it completed for a strict load.

    Raises:
        `ValueError`: Missing or unexpected keys or wrong shapes; the message names them and, when the weights fit
            another released teacher, the `--arch` to pass.
    """
    reference, name = resolve_arch(arch)
    if problems := _mismatches(state_dict, name):
        fits = [other for other, other_name in TEACHER_ARCHS.items() if not _mismatches(state_dict, other_name)]
        hint = f"It fits --arch {fits[0]}." if fits else f"Pass the checkpoint of a {reference} teacher."
        raise UsageError(f"The checkpoint does not match --arch {reference} ({name}): {'; '.join(problems)}. {hint}")
    filled = dict(state_dict)
    for key in _expected_shapes(name):
        filled.setdefault(key, torch.zeros((), dtype=torch.long))
    return filled


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_teacher(state_dict: dict[str, torch.Tensor], name: str, provenance: dict[str, Any]) -> PreTrainedModel:
    id2label = dict(enumerate(CIFAR100_FINE_LABELS))
    spec = ModelSpec(name=name, source=name, kind="timm_arch", revision=None, is_timm=True)
    model = load_image_classifier(spec, pretrained=False, id2label=id2label)
    model.timm_model.load_state_dict(state_dict, strict=True)
    setattr(model.config, PROVENANCE_KEY, {**provenance, "weights_sha256": weights_sha256(model)})
    return model.eval()


def _write_verified(model: PreTrainedModel, folder: Path) -> None:
    """Save `model` into `folder` and check that the saved folder reproduces its logits exactly."""
    save_student(model, str(folder))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reloaded = load_image_classifier(ModelSpec(folder.name, str(folder), "local", None, True)).eval()
    with torch.no_grad():
        if not torch.equal(model(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits):
            raise UsageError("The saved teacher does not reproduce the checkpoint's logits; please report this.")


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename `staging` to `output`, replacing an existing `output` only once the new folder is complete."""
    if not output.exists():
        os.replace(staging, output)
        return
    retired = staging.with_suffix(".old")
    os.replace(output, retired)
    try:
        os.replace(staging, output)
    except OSError:
        os.replace(retired, output)
        raise
    shutil.rmtree(retired)


def convert_checkpoint(
    checkpoint: str | os.PathLike[str],
    arch: str,
    output_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    release: str = RELEASE_NAME,
) -> Path:
    """Convert a released teacher checkpoint into an hfkd teacher folder (see the module docstring).

    Everything is checked before anything is written; the folder is written beside `output_dir` under a temporary
    name and renamed at the end, so a failed conversion leaves no half-written `output_dir`.

    Args:
        checkpoint (`str` or `os.PathLike`): The `.pth` file (`{"model": state_dict}` or a bare state dict).
        arch (`str`): The teacher, by the reference's name (`resnet32x4`) or hfkd's (`cifar_resnet32x4`).
        output_dir (`str` or `os.PathLike`): The folder to write; must be absent or empty unless `overwrite`.
        overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `output_dir`.
        release (`str`, *optional*, defaults to `"cifar_teachers.tar"`): The release the file comes from, recorded
            in the provenance.

    Returns:
        `Path`: `output_dir`.
    """
    source, output = Path(checkpoint), Path(output_dir)
    reference, name = resolve_arch(arch)
    if output.exists() and not (output.is_dir() and (overwrite or not any(output.iterdir()))):
        what = "is not empty; pass --overwrite to replace it" if output.is_dir() else "is a file; pass a folder path"
        raise UsageError(f"--output_dir {str(output)!r} exists and {what}.")
    state_dict, info = read_checkpoint(source)
    state_dict = check_state_dict(state_dict, reference)
    provenance = {
        "kind": "released_checkpoint",
        "release": release,
        "reference_arch": reference,
        "architecture": name,
        "source_file": source.name,
        "source_sha256": _sha256(source),
        **{f"checkpoint_{key}": value for key, value in info.items()},
        "converted_on": datetime.now(timezone.utc).date().isoformat(),
        "converted_with": f"hfkd.convert {__version__}",
    }
    model = _build_teacher(state_dict, name, provenance)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        _write_verified(model, staging)
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"Converted {source.name} ({reference}) into {str(output)!r}.")
    return output
