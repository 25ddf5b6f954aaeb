"""What lands on disk can be trusted, proven by injecting faults into real runs of examples/run_image_distill.py:
the numbers are the student's, a non-finite run writes nothing, a killed run resumes exactly, a teacher cache is used
only with its own data, no secret or local path leaves the machine, bad data fails early."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, ViTImageProcessor

from hfkd import DistillationArguments
from hfkd.commands.arguments import DataArguments, ModelArguments, parse_args
from hfkd.commands.run_folder import ADDED_SETTINGS, differing_settings, run_settings
from hfkd.training.callbacks import NonFiniteError
from hfkd.training.checkpoints import CHECKPOINT_MARKER

from .testing_utils import slow, tiny_resnet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import run_image_distill  # noqa: E402

CLASSES = ["ant", "bee", "cow"]
TOKEN = "hf_TESTsecretTOKENvalue1234567890"


def _images(root: Path, per_class: dict[str, int], seed: int, size: int = 24) -> str:
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return str(root)


def _model(folder: Path, *, wide: bool, seed: int) -> str:
    model = tiny_resnet(len(CLASSES), wide=wide, seed=seed)
    model.config.id2label = dict(enumerate(CLASSES))
    model.config.label2id = {name: i for i, name in enumerate(CLASSES)}
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 20, "width": 20}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("integrity")
    return {
        "root": str(root),
        "data": _images(root / "data", {"train": 7, "validation": 3}, seed=0),
        # Same folder name, same size, other images: only the content tells them apart.
        "other_data": _images(root / "other" / "data", {"train": 7, "validation": 3}, seed=1),
        "student": _model(root / "student", wide=False, seed=1),
        "teacher": _model(root / "teacher", wide=True, seed=2),
    }


def _argv(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", setup["data"], "--student", setup["student"], "--teacher", setup["teacher"], "--loss", "kd",
        "--output_dir", str(out), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--seed", "3", "--learning_rate", "0.05",
        "--optim", "sgd", "--dataloader_num_workers", "0", *extra,
    ]  # fmt: skip


def _run_subprocess(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO), **env}  # fmt: skip
    command = [sys.executable, str(REPO / "tests" / "fault_runner.py"), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


# -------------------------------------------------------------------------------------------- 1. the student's numbers


def _accuracy(model_dir: str, setup: dict) -> float:
    """An independent top-1 of a saved model on the validation split, with its own processor and no hfkd code."""
    from transformers import AutoImageProcessor

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    correct = total = 0
    for label, name in enumerate(CLASSES):
        for path in sorted((Path(setup["data"]) / "validation" / name).glob("*.png")):
            inputs = processor(images=PILImage.open(path).convert("RGB"), return_tensors="pt")
            with torch.no_grad():
                correct += int(model(**inputs).logits.argmax(-1).item() == label)
            total += 1
    return correct / total


def test_every_metrics_file_and_the_card_give_the_student_its_own_accuracy(tmp_path, setup):
    out = tmp_path / "run"
    run_image_distill.main(_argv(setup, out, "--max_steps", "3", "--save_strategy", "no", "--eval_strategy", "steps",
                                 "--eval_steps", "2"))  # fmt: skip
    student, teacher = _accuracy(str(out), setup), _accuracy(setup["teacher"], setup)
    files = {name: json.loads((out / f"{name}_results.json").read_text()) for name in ("all", "eval", "teacher_eval")}
    assert files["eval"]["eval_accuracy"] == pytest.approx(student)
    assert files["all"]["eval_accuracy"] == pytest.approx(student)
    assert files["teacher_eval"]["teacher_eval_accuracy"] == pytest.approx(teacher)
    assert files["all"]["teacher_eval_accuracy"] == pytest.approx(teacher)
    assert not any(key.startswith("eval_") for key in files["teacher_eval"])
    card = (out / "README.md").read_text()
    student_row = next(line for line in card.splitlines() if line.startswith("| Student (this model)"))
    teacher_row = next(line for line in card.splitlines() if line.startswith("| Teacher"))
    assert f"| {100 * student:.2f} |" in student_row and f"| {100 * teacher:.2f} |" in teacher_row
    # the per-evaluation table: the Trainer's evaluations (step 2 by --eval_steps, step 3 as training ends), without
    # the script's final evaluation repeated as a third row
    table = card.split("| Epoch | Step |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert [row.split("|")[2].strip() for row in table] == ["2", "3"]


# -------------------------------------------------------------------------------------------- 2. non-finite


def _inf_teacher(folder: Path) -> str:
    model = tiny_resnet(len(CLASSES), wide=True, seed=2)
    with torch.no_grad():
        model.classifier[-1].weight[0, 0] = float("inf")
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 20, "width": 20}).save_pretrained(folder)
    return str(folder)


def test_a_non_finite_teacher_stops_the_run_and_nothing_non_finite_is_written(tmp_path, setup):
    out = tmp_path / "run"
    argv = _argv(setup, out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps",
                 "2", "--teacher", _inf_teacher(tmp_path / "inf_teacher"))  # fmt: skip
    result = _run_subprocess(argv)
    assert result.returncode != 0
    assert "NonFiniteError" in result.stderr and "distill/kd" in result.stderr
    assert "teacher's logits are non-finite" in result.stderr and "steps 1 to 2" in result.stderr
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()
    for path in out.rglob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


def test_skip_mode_drops_non_finite_updates_and_counts_them(tmp_path, setup):
    from hfkd import DistillationArguments, DistillationTrainer

    from .testing_utils import collate, synthetic_dataset

    class SometimesInf(torch.nn.Module):
        """A teacher whose logits are inf for batches whose first label is 0."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_resnet(5, wide=True, seed=2)
            self.config = self.inner.config

        def forward(self, pixel_values, **kwargs):
            out = self.inner(pixel_values=pixel_values, **kwargs)
            out["logits"] = out["logits"] * torch.where(pixel_values.mean() > 0, float("inf"), 1.0)
            return out

    student = tiny_resnet(5, seed=1)
    args = DistillationArguments(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=2,
        max_steps=8, logging_steps=4, save_strategy="no", distill_nonfinite="skip", learning_rate=0.05, optim="sgd",
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, teacher_model=SometimesInf(), args=args, train_dataset=synthetic_dataset(16),
        data_collator=collate,
    )  # fmt: skip
    trainer.train()
    skipped = [e["distill/skipped_steps"] for e in trainer.state.log_history if "distill/skipped_steps" in e]
    assert skipped and 0 < skipped[-1] < 8
    assert all(torch.isfinite(p).all() for p in student.parameters())
    args.distill_max_skipped_steps = 1
    with pytest.raises(NonFiniteError, match="distill_max_skipped_steps"):
        DistillationTrainer(model=tiny_resnet(5, seed=1), teacher_model=SometimesInf(), args=args,
                            train_dataset=synthetic_dataset(16), data_collator=collate).train()  # fmt: skip


# -------------------------------------------------------------------------------------------- 3. exact resume


@slow
def test_killed_runs_resume_exactly_with_augmentation(tmp_path, setup):
    """SIGKILL after step 5 (checkpoint-4 complete), and SIGKILL while checkpoint-4 is written (so checkpoint-2 is the
    newest complete one): the same command again resumes and ends with the uninterrupted run's weights, bit for
    bit, although every sample is randomly cropped and flipped (2 epochs of 5 steps)."""
    common = ("--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "2",
              "--train_augment", "crop_flip", "--logging_steps", "1")  # fmt: skip
    reference = tmp_path / "reference"
    assert _run_subprocess(_argv(setup, reference, *common)).returncode == 0

    killed = tmp_path / "killed"
    first = _run_subprocess(_argv(setup, killed, *common), HFKD_TEST_KILL_AT_STEP="5")
    assert first.returncode == -9 and (killed / "checkpoint-4" / CHECKPOINT_MARKER).is_file()
    assert not (killed / "model.safetensors").exists()
    # Another setting into the same folder is refused, naming it; the folder is untouched.
    with pytest.raises(ValueError, match=r"learning_rate: 0\.05 -> 0\.1.*--overwrite_output_dir"):
        run_image_distill.main(_argv(setup, killed, *common, "--learning_rate", "0.1"))
    second = _run_subprocess(_argv(setup, killed, *common))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr + second.stdout and "checkpoint-4" in second.stderr + second.stdout

    torn = tmp_path / "torn"
    first = _run_subprocess(_argv(setup, torn, *common), HFKD_TEST_KILL_SAVING="4")
    assert first.returncode == -9
    assert (torn / "checkpoint-4" / "model.safetensors").is_file()
    assert not (torn / "checkpoint-4" / CHECKPOINT_MARKER).exists() and (torn / "checkpoint-2").is_dir()
    second = _run_subprocess(_argv(setup, torn, *common))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Skipping" in second.stdout + second.stderr and "checkpoint-4" in second.stdout + second.stderr

    expected = _weights(reference)
    for folder in (killed, torn):
        got = _weights(folder)
        assert set(got) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=f"{folder.name}: {name}")
    # Rotation kept two complete checkpoints and never an incomplete one behind the newest complete.
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_resume_flags_and_overwrite(tmp_path, setup):
    out = tmp_path / "run"
    common = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    run_image_distill.main(_argv(setup, out, *common))
    (out / "teacher_eval_results.json").write_text("{}")  # a stale file of the earlier run
    with pytest.raises(ValueError, match="already holds a finished run"):
        run_image_distill.main(_argv(setup, out, *common))
    for flag in ("latest", "True"):
        metrics = run_image_distill.main(_argv(setup, out, *common, "--resume_from_checkpoint", flag))
        assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    (out / "distill_adapters.safetensors").write_bytes(b"stale")
    (out / "checkpoint-99").mkdir()
    run_image_distill.main(_argv(setup, out, "--max_steps", "2", "--save_strategy", "no", "--overwrite_output_dir",
                                 "--evaluate_teacher", "false"))  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert not any(name.startswith("checkpoint-") for name in names)
    assert "distill_adapters.safetensors" not in names and "teacher_eval_results.json" not in names
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_a_run_folder_written_before_a_setting_existed_resumes_as_the_same_run():
    """A folder's recorded settings lack the settings added since it was written: they count as their defaults (so
    the same command resumes it), and a value other than the default is still reported."""
    defaults = {f.name: f.default for cls in (ModelArguments, DataArguments, DistillationArguments)
                for f in dataclasses.fields(cls) if f.name in ADDED_SETTINGS}  # fmt: skip
    assert defaults == ADDED_SETTINGS  # the table says what the dataclasses default to
    current = run_settings(*parse_args(["--student", "s", "--teacher", "t", "--loss", "kd", "--output_dir", "o"])[:4])
    old = {name: value for name, value in current.items() if name not in ADDED_SETTINGS}
    assert differing_settings(old, current) == []
    current["random_erasing"] = 0.2
    assert differing_settings(old, current) == ["random_erasing: 0.0 -> 0.2"]
    assert differing_settings({**old, "random_erasing": 0.2}, current) == []


# -------------------------------------------------------------------------------------------- 4. the teacher cache


def test_a_cache_serves_only_its_own_data_and_teacher(tmp_path, setup):
    from hfkd.commands import cache as teacher_cache

    cache = tmp_path / "cache"
    teacher_cache.main(["--teacher", setup["teacher"], "--dataset", setup["data"], "--output_dir", str(cache),
                        "--max_train_samples", "16", "--seed", "0", "--top_k", "2", "--shard_size", "5"])  # fmt: skip
    base = ["--dataset", setup["data"], "--student", setup["student"], "--loss", "kd", "--teacher_cache_dir",
            str(cache), "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "--max_steps",
            "2", "--save_strategy", "no", "--disable_tqdm", "true", "--evaluate_teacher", "false"]  # fmt: skip
    # Another seed selects other rows with --max_train_samples; the cache's selection wins, so the data match.
    metrics = run_image_distill.main([*base, "--output_dir", str(tmp_path / "ok"), "--seed", "42"])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    refusals = {
        "content hash differs": ["--dataset", setup["other_data"]],
        "max_train_samples=16": ["--max_train_samples", "12"],
        "teacher='teacher'": ["--teacher", setup["student"]],
    }
    for message, extra in refusals.items():
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            run_image_distill.main([*base, "--output_dir", str(tmp_path / "bad"), *extra])
    # A truncated shard is found when the cache is opened, and named.
    shard = cache / "epoch_0000" / "shard_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(ValueError, match="shard_00002.safetensors is truncated"):
        run_image_distill.main([*base, "--output_dir", str(tmp_path / "bad2")])


# -------------------------------------------------------------------------------------------- 5. secrets and paths


def test_no_token_and_no_local_path_in_any_written_file(tmp_path, setup):
    out = tmp_path / "run"
    run_image_distill.main(_argv(
        setup, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--hub_token", TOKEN,
        "--teacher_model_init_kwargs", '{"trust_remote_code": false}',
    ))  # fmt: skip
    files = _all_files(out)
    assert any(p.name == "training_args.bin" for p in files) and (out / "checkpoint-2").is_dir()
    for path in files:
        data = path.read_bytes()
        assert TOKEN.encode() not in data, path
        assert str(tmp_path).encode() not in data and setup["root"].encode() not in data, path
    config = json.loads((out / "distill_config.json").read_text())
    assert config["teacher"]["name_or_path"] == "teacher" and config["teacher"]["local"]
    assert "a local checkpoint (`teacher`)" in (out / "README.md").read_text()


# -------------------------------------------------------------------------------------------- 6. bad data


def test_bad_data_fails_before_the_output_folder_exists(tmp_path, setup):
    broken = tmp_path / "broken"
    for split in ("train", "validation"):
        for name in CLASSES:
            (broken / split / name).mkdir(parents=True)
            (broken / split / name / "0.png").write_bytes(b"not a png")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="no readable image"):
        run_image_distill.main(_argv(setup, out, "--dataset", str(broken), "--skip_unreadable", "--max_steps", "1"))
    assert not out.exists()
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        PILImage.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(flat / f"{i}.png")
    with pytest.raises(ValueError, match="class subfolders"):
        run_image_distill.main(_argv(setup, out, "--dataset", str(flat), "--max_steps", "1"))
    assert not out.exists()


def test_a_timm_student_resumes_exactly_and_its_files_are_shared(tmp_path, setup):
    """timm students are saved in timm's layout only in the final folder: a checkpoint keeps transformers' names, so
    resuming restores the weights (a timm-layout checkpoint would load nothing, silently). Saved files get the
    permissions the umask gives (transformers writes weights 0600)."""
    common = ["--student", "test_resnet", "--student_pretrained", "false", "--image_size", "24",
              "--lr_scheduler_type", "constant", "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
              "--evaluate_teacher", "false"]  # fmt: skip
    run_image_distill.main(_argv(setup, tmp_path / "a", *common))
    resumed = tmp_path / "b"
    run_image_distill.main(_argv(setup, resumed, *common[:-4], "--max_steps", "2", "--save_strategy", "steps",
                                 "--save_steps", "2", "--evaluate_teacher", "false"))  # fmt: skip
    checkpoint = load_file(resumed / "checkpoint-2" / "model.safetensors")
    assert all(key.startswith("timm_model.") for key in checkpoint)
    (resumed / "model.safetensors").unlink()
    (resumed / "all_results.json").unlink()
    (resumed / "distill_config.json").unlink()
    run_image_distill.main(_argv(setup, resumed, *common, "--resume_from_checkpoint", "latest"))
    expected, got = _weights(tmp_path / "a"), _weights(resumed)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    mask = os.umask(0)
    os.umask(mask)
    for path in _all_files(resumed):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
