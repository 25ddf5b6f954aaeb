"""Every registered loss through examples/run_image_distill.py: two training steps on a tiny CNN pair, a tiny
ViT-to-CNN pair and a timm pair (mdistiller's CIFAR ResNets through TimmWrapper), offline."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hfkd.losses import get_loss_class, list_losses, resolve_loss_kwargs
from hfkd.models.loading import load_image_classifier

from .testing_utils import tiny_resnet, tiny_vit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

CLASSES = ["a", "b", "c"]
# Settings a 2-step run on 18 images needs; everything else keeps the paper defaults.
SMOKE_KWARGS = {"crd": {"nce_k": 8}}
# Losses that need what these models do not provide must refuse them with a clear error before training.
# ofd reads pre-activation maps with hooks that hfkd.features has for ResNets (and the CIFAR ResNets, WRNs, VGGs) only.
# deit trains a student's distillation head: these students have none (tests/test_deit_students.py trains DeiTs).
REFUSED = {("ofd", "vit_teacher"): "pre-activation", ("sdd", "vit_teacher"): "head"}
REFUSED |= {("deit", t): "has no distillation head" for t in ("cnn_teacher", "vit_teacher", "timm_teacher")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("validation", 2)):
        for name in CLASSES:
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(per_class):
                array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                PILImage.fromarray(array).save(root / "data" / split / name / f"{i}.png")
    paths = {"data": str(root / "data")}
    for name, model in (
        ("student", tiny_resnet(3, seed=1)),
        ("cnn_teacher", tiny_resnet(3, wide=True, seed=2)),
        ("vit_teacher", tiny_vit(3, seed=3)),
    ):
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / name)
        paths[name] = str(root / name)
    # A timm pair through TimmWrapperForImageClassification: mdistiller's CIFAR ResNets.
    timm_teacher = load_image_classifier("cifar_resnet14", num_labels=3, pretrained=False)
    timm_teacher.save_pretrained(root / "timm_teacher")
    paths["timm_teacher"] = str(root / "timm_teacher")
    paths["timm_student"] = "cifar_resnet8"
    return paths


@pytest.mark.parametrize("teacher", ["cnn_teacher", "vit_teacher", "timm_teacher"])
@pytest.mark.parametrize("loss", [key for key in list_losses() if "image-classification" in get_loss_class(key).tasks])
def test_two_steps_through_the_script(tmp_path, setup, loss, teacher):
    out = tmp_path / "run"
    student = ["--student", setup["timm_student"], "--student_pretrained", "false"] if teacher == "timm_teacher" else [
        "--student", setup["student"]]  # fmt: skip
    argv = [
        "--dataset", setup["data"], *student, "--teacher", setup[teacher], "--loss", loss,
        "--loss_kwargs", json.dumps(SMOKE_KWARGS.get(loss, {})), "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "6", "--report_to", "none",
        "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1",
        "--evaluate_teacher", "false",
    ]  # fmt: skip
    if (loss, teacher) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[loss, teacher]):
            run_image_distill.main(argv)
        assert not (out / "model.safetensors").exists()
        return
    metrics = run_image_distill.main(argv)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2 and all(np.isfinite(entry["loss"]) for entry in logged)
    # The step's loss is CE plus this loss (both weights 1), each logged on its own.
    for entry in logged:
        assert entry["loss"] == pytest.approx(entry["distill/ce"] + entry["distill/loss"], rel=1e-4, abs=1e-6)
    assert (out / "model.safetensors").is_file()
    has_parameters = (out / "distill_adapters.safetensors").is_file()
    assert has_parameters == (loss in {"ctkd", "fitnet", "vid", "ofd", "crd", "reviewkd"}), loss
    record = json.loads((out / "distill_config.json").read_text())
    assert record["distill_loss"] == loss
    resolved = resolve_loss_kwargs(loss, SMOKE_KWARGS.get(loss, {}))
    assert record["distill_loss_kwargs"] == json.loads(json.dumps(resolved))  # JSON has lists, not tuples
