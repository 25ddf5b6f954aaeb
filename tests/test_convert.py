"""`hfkd.convert`: released RepDistiller / mdistiller CIFAR-100 teacher checkpoints -> hfkd teacher folders.

The checkpoints are built here with the reference's own key names (nothing is downloaded): hfkd's network gives the
state dict, and `REFERENCE_KEYS` pins a few exact names, shapes and the key count of each reference network (read off
mdistiller `mdistiller/models/cifar/*.py` = RepDistiller `models/*.py`), so a renamed module in hfkd fails here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from transformers import AutoModelForImageClassification

from hfkd.commands.convert import main
from hfkd.models.convert import CIFAR100_FINE_LABELS, TEACHER_ARCHS, convert_checkpoint, read_checkpoint, resolve_arch
from hfkd.models.export import save_student
from hfkd.models.label_space import map_teacher_labels
from hfkd.models.loading import load_image_classifier
from hfkd.models.provenance import PROVENANCE_KEY, describe_provenance, teacher_provenance
from hfkd.teachers.live import load_teacher
from hfkd.utils.hashing import weights_sha256

# reference name -> (number of state-dict keys, a few exact keys with their shapes), from the reference code.
REFERENCE_KEYS: dict[str, tuple[int, dict[str, tuple[int, ...]]]] = {
    "resnet32x4": (
        206,
        {
            "conv1.weight": (32, 3, 3, 3),
            "layer1.0.downsample.0.weight": (64, 32, 1, 1),
            "layer3.4.bn2.running_var": (256,),
            "fc.weight": (100, 256),
        },
    ),
    "resnet56": (
        344,
        {
            "layer1.8.conv2.weight": (16, 16, 3, 3),
            "layer2.0.downsample.1.num_batches_tracked": (),
            "fc.weight": (100, 64),
        },
    ),
    "resnet110": (668, {"layer3.17.bn2.weight": (64,), "fc.bias": (100,)}),
    "wrn_40_2": (
        227,
        {
            "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
            "block3.layer.5.conv2.weight": (128, 128, 3, 3),
            "bn1.running_mean": (128,),
            "fc.weight": (100, 128),
        },
    ),
    "vgg13": (
        72,
        {
            "block0.0.weight": (64, 3, 3, 3),
            "block0.4.running_var": (64,),
            "block4.3.weight": (512, 512, 3, 3),
            "classifier.weight": (100, 512),
        },
    ),
    "ResNet50": (
        320,
        {"layer1.0.shortcut.0.weight": (256, 64, 1, 1), "layer4.2.bn3.weight": (2048,), "linear.weight": (100, 2048)},
    ),
}
PIXELS = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_model(reference: str, seed: int = 0) -> torch.nn.Module:
    """hfkd's network with seeded random weights and BatchNorm statistics (so the buffers matter), in eval mode."""
    torch.manual_seed(seed)
    model = timm.create_model(TEACHER_ARCHS[reference], num_classes=100)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(78200)
    return model.eval()


def reference_state_dict(reference: str) -> dict[str, torch.Tensor]:
    state_dict = reference_model(reference).state_dict()
    count, keys = REFERENCE_KEYS[reference]
    assert len(state_dict) == count
    assert {key: tuple(state_dict[key].shape) for key in keys} == keys
    return state_dict


def save_released(path: Path, state_dict: dict[str, torch.Tensor], **kwargs: object) -> Path:
    """A file laid out as RepDistiller's train_teacher.py saves `ckpt_epoch_240.pth`."""
    optimizer = {"state": {}, "param_groups": [{"lr": 0.0005, "momentum": 0.9, "nesterov": False, "params": [0]}]}
    torch.save({"epoch": 240, "model": state_dict, "accuracy": torch.tensor(79.42), "optimizer": optimizer}, path)
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=PIXELS) if hasattr(model, "config") else model(PIXELS)
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet56, converted once for the tests that only read the folder."""
    root = tmp_path_factory.mktemp("converted")
    checkpoint = save_released(root / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    return convert_checkpoint(checkpoint, "resnet56", root / "teacher")


@pytest.mark.parametrize("reference", list(TEACHER_ARCHS))
def test_hfkd_networks_use_the_reference_key_names(reference: str) -> None:
    count, keys = REFERENCE_KEYS[reference]
    state_dict = timm.create_model(TEACHER_ARCHS[reference], num_classes=100).state_dict()
    assert len(state_dict) == count
    assert {key: tuple(state_dict[key].shape) for key in keys} == keys


@pytest.mark.parametrize("reference", list(TEACHER_ARCHS))
def test_every_teacher_converts_with_identical_logits(tmp_path: Path, reference: str) -> None:
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict(reference))
    output = convert_checkpoint(checkpoint, reference, tmp_path / "teacher")
    teacher = load_teacher(str(output)).eval()
    assert torch.equal(logits(teacher), logits(reference_model(reference)))
    assert teacher.config.num_labels == 100


def test_converted_folder_loads_in_transformers_and_timm(converted: Path) -> None:
    expected = logits(reference_model("resnet56"))
    auto = AutoModelForImageClassification.from_pretrained(converted).eval()
    assert torch.equal(logits(auto), expected)
    assert auto.config.id2label[0] == "apple" and auto.config.id2label[99] == "worm"
    assert torch.equal(logits(load_image_classifier(str(converted)).eval()), expected)
    native = timm.create_model(f"local-dir:{converted}", pretrained=False)
    timm.models.load_checkpoint(native, str(converted / "model.safetensors"))
    assert torch.equal(logits(native.eval()), expected)
    assert tuple(native.pretrained_cfg["mean"]) == (0.5071, 0.4867, 0.4408)
    assert tuple(native.pretrained_cfg["input_size"]) == (3, 32, 32)


def test_converted_folder_loads_with_timm_pretrained(converted: Path) -> None:
    native = timm.create_model(f"local-dir:{converted}", pretrained=True)
    assert torch.equal(logits(native.eval()), logits(reference_model("resnet56")))


@pytest.mark.parametrize("layout", ["bare", "module_prefix", "legacy_format", "no_num_batches_tracked", "state_dict"])
def test_checkpoint_layouts(tmp_path: Path, layout: str) -> None:
    state_dict = reference_state_dict("resnet56")
    payload: object = state_dict
    if layout == "module_prefix":
        payload = {f"module.{key}": value for key, value in state_dict.items()}
    elif layout == "no_num_batches_tracked":
        payload = {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}
    elif layout == "state_dict":
        payload = {"state_dict": state_dict, "epoch": 7}
    checkpoint = tmp_path / "weights.pth"
    torch.save(payload, checkpoint, _use_new_zipfile_serialization=layout != "legacy_format")
    output = convert_checkpoint(checkpoint, "cifar_resnet56", tmp_path / "teacher")
    assert torch.equal(logits(load_teacher(str(output)).eval()), logits(reference_model("resnet56")))


def test_read_checkpoint_reports_epoch_and_accuracy(tmp_path: Path) -> None:
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    state_dict, info = read_checkpoint(checkpoint)
    assert "fc.weight" in state_dict
    assert info == {"epoch": 240, "top1": pytest.approx(79.42, abs=1e-4)}


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", bytes(range(256)) * 4])
def test_file_that_is_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    checkpoint = tmp_path / "ckpt_epoch_240.pth"
    checkpoint.write_bytes(content)
    with pytest.raises(ValueError, match="ckpt_epoch_240.pth is not a PyTorch checkpoint"):
        convert_checkpoint(checkpoint, "resnet56", tmp_path / "teacher")
    assert not (tmp_path / "teacher").exists()


def test_pickle_that_needs_code_is_refused(tmp_path: Path) -> None:
    # RepDistiller's `<arch>_last.pth` also pickles its argparse options.
    checkpoint = tmp_path / "resnet56_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet56"), "model": reference_state_dict("resnet56")}, checkpoint)
    with pytest.raises(ValueError, match=r"would run code \(argparse.Namespace\).*weights_only=True") as error:
        convert_checkpoint(checkpoint, "resnet56", tmp_path / "teacher")
    assert "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["resnet56_last.pth"]


def test_file_without_state_dict(tmp_path: Path) -> None:
    checkpoint = tmp_path / "other.pth"
    torch.save({"epoch": 3, "weights": [1, 2]}, checkpoint)
    with pytest.raises(ValueError, match=r"holds no state dict \(found \['epoch', 'weights'\]\)"):
        convert_checkpoint(checkpoint, "resnet56", tmp_path / "teacher")


def test_checkpoint_of_another_arch_names_the_keys_and_the_fix(tmp_path: Path) -> None:
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    with pytest.raises(ValueError, match="does not match --arch resnet32x4") as error:
        convert_checkpoint(checkpoint, "resnet32x4", tmp_path / "teacher")
    message = str(error.value)
    assert "conv1.weight: checkpoint (16, 3, 3, 3) vs (32, 3, 3, 3)" in message
    assert "5 missing key(s) (layer1.0.downsample.0.weight, " in message and "unexpected key(s) (layer1.5." in message
    assert message.endswith("It fits --arch resnet56.")
    assert not (tmp_path / "teacher").exists()


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    state_dict = reference_state_dict("resnet56")
    del state_dict["fc.weight"]
    state_dict["head.weight"] = torch.zeros(1)
    checkpoint = save_released(tmp_path / "ckpt.pth", state_dict)
    expected = r"1 missing key\(s\) \(fc.weight\); 1 unexpected key\(s\) \(head.weight\)\. Pass the checkpoint"
    with pytest.raises(ValueError, match=expected):
        convert_checkpoint(checkpoint, "resnet56", tmp_path / "teacher")


def test_arch_spellings() -> None:
    assert resolve_arch("wrn_40_2") == resolve_arch("cifar_wrn_40_2") == ("wrn_40_2", "cifar_wrn_40_2")
    assert resolve_arch("resnet50") == resolve_arch("ResNet50") == ("ResNet50", "cifar_resnet50")
    with pytest.raises(ValueError, match="Unknown --arch 'resnet8x4'") as error:
        resolve_arch("resnet8x4")
    for reference, name in TEACHER_ARCHS.items():
        assert reference in str(error.value) and name in str(error.value)


def test_existing_output_dir(tmp_path: Path) -> None:
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    output = tmp_path / "teacher"
    output.mkdir()
    convert_checkpoint(checkpoint, "resnet56", output)  # an empty folder is fine
    (output / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty; pass --overwrite"):
        convert_checkpoint(checkpoint, "resnet56", output)
    assert (output / "notes.txt").read_text() == "keep me"
    convert_checkpoint(checkpoint, "resnet56", output, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_epoch_240.pth", "teacher"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def save_then_fail(model: object, output_dir: str) -> None:
        Path(output_dir, "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr("hfkd.models.convert.save_student", save_then_fail)
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(checkpoint, "resnet56", tmp_path / "teacher")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_epoch_240.pth"]


def test_provenance_is_recorded_and_read_back(converted: Path) -> None:
    checkpoint = converted.parent / "ckpt_epoch_240.pth"
    recorded = json.loads((converted / "config.json").read_text())[PROVENANCE_KEY]
    assert recorded["kind"] == "released_checkpoint"
    assert recorded["release"] == "cifar_teachers.tar"
    assert recorded["reference_arch"] == "resnet56" and recorded["architecture"] == "cifar_resnet56"
    assert recorded["source_file"] == "ckpt_epoch_240.pth"
    assert recorded["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert recorded["checkpoint_epoch"] == 240 and recorded["checkpoint_top1"] == pytest.approx(79.42, abs=1e-4)
    assert len(recorded["converted_on"]) == 10 and recorded["converted_with"].startswith("hfkd.convert ")
    assert recorded["weights_sha256"] == weights_sha256(reference_model("resnet56"))
    assert teacher_provenance(converted) == teacher_provenance(str(converted)) == recorded
    assert teacher_provenance(load_teacher(str(converted))) == recorded
    assert describe_provenance(recorded) == "released teacher (cifar_teachers.tar resnet56)"


def test_provenance_is_dropped_once_the_weights_change(converted: Path, tmp_path: Path) -> None:
    # A converted teacher fine-tuned as a student keeps the config key, but is no longer the released network.
    student = load_image_classifier(str(converted), num_labels=100)
    assert teacher_provenance(student) is not None
    with torch.no_grad():
        student.timm_model.fc.bias.add_(0.01)
    assert teacher_provenance(student) is None
    save_student(student, str(tmp_path / "finetuned"))
    assert PROVENANCE_KEY in json.loads((tmp_path / "finetuned" / "config.json").read_text())
    assert teacher_provenance(tmp_path / "finetuned") is None
    assert teacher_provenance(load_teacher(str(converted)).to(torch.bfloat16)) is None
    mapped = map_teacher_labels(load_teacher(str(converted)), {"apple": 0, "worm": 99}, ["apple", "worm"])
    assert teacher_provenance(mapped) == teacher_provenance(converted)


def test_no_provenance_for_other_models(tmp_path: Path) -> None:
    model = load_image_classifier("cifar_resnet8", pretrained=False, num_labels=10)
    save_student(model, str(tmp_path / "trained"))
    assert teacher_provenance(tmp_path / "trained") is None
    assert teacher_provenance(model) is None
    assert teacher_provenance("microsoft/resnet-50") is None
    assert describe_provenance(None) is None


def test_no_absolute_path_in_written_files(converted: Path) -> None:
    machine_path = str(converted.parent).encode()
    for path in converted.rglob("*"):
        assert machine_path not in path.read_bytes(), path.name


def test_cifar100_label_names() -> None:
    assert len(CIFAR100_FINE_LABELS) == len(set(CIFAR100_FINE_LABELS)) == 100
    assert CIFAR100_FINE_LABELS[:3] == ("apple", "aquarium_fish", "baby")
    assert CIFAR100_FINE_LABELS[26] == "crab" and CIFAR100_FINE_LABELS[-1] == "worm"
    assert list(CIFAR100_FINE_LABELS) == sorted(CIFAR100_FINE_LABELS)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = save_released(tmp_path / "ckpt_epoch_240.pth", reference_state_dict("resnet56"))
    output = tmp_path / "teacher"
    assert main([str(checkpoint), "--arch", "resnet56", "--output_dir", str(output)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"Wrote {output}: released teacher (cifar_teachers.tar resnet56), sha256 ")
    assert summary.endswith(f"; use it with --teacher {output}")
    assert "\n" not in summary
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint), "--arch", "resnet8x4", "--output_dir", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Unknown --arch 'resnet8x4'" in error and "ResNet50 (= cifar_resnet50)" in error


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "hfkd convert" in text and "--arch" in text and "cifar_teachers.tar" in text


def test_a_run_from_the_converted_teacher_says_it_is_the_released_one(tmp_path: Path, converted: Path) -> None:
    """distill_config.json and the card name the teacher's origin; a teacher trained by hfkd is named as such."""
    from hfkd import DistillationArguments, DistillationTrainer
    from hfkd.hub.model_card import ModelCardInfo, build_model_card

    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    student = load_image_classifier("cifar_resnet8", pretrained=False, num_labels=100)
    trainer = DistillationTrainer(model=student, teacher_model=str(converted), args=args)
    record = trainer.distill_config()["teacher"]
    assert record["provenance"] == "released teacher (cifar_teachers.tar resnet56)" and record["local"]
    info = ModelCardInfo.for_run(trainer.distill_config(), args, student.config, model_name="s")
    assert "released teacher (cifar_teachers.tar resnet56)" in build_model_card(info).text

    retrained = tmp_path / "retrained"
    save_student(load_image_classifier("cifar_resnet56", pretrained=False, num_labels=100), str(retrained))
    (retrained / "distill_config.json").write_text(json.dumps({"distill_loss": "ce", "recipe": "recipes/x.yaml"}))
    trainer = DistillationTrainer(model=student, teacher_model=str(retrained), args=args)
    assert trainer.distill_config()["teacher"]["provenance"] == (
        "trained with hfkd (recipe recipes/x.yaml), not a released checkpoint"
    )


def test_the_module_runs_as_its_own_entry_point():
    """`import hfkd` does not import the converter, so `python -m hfkd.convert` runs without runpy's warning that
    the module was already imported (it was, through the teacher's provenance check)."""
    run = subprocess.run([sys.executable, "-m", "hfkd.convert", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "usage: hfkd convert" in run.stdout
    assert "RuntimeWarning" not in run.stderr, run.stderr
