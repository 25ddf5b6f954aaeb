"""A new user's first hour with examples/run_image_distill.py: help that helps, the flags they know, failures that
are fast and one line long, defaults that train."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hfkd import DistillationArguments
from hfkd.commands import distill
from hfkd.commands.arguments import build_parser, parse_args
from hfkd.commands.data import check_teachers_take, load_data, prepare_splits
from hfkd.data.transforms import ImageConfig

from .testing_utils import tiny_resnet, tiny_vit

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "run_image_distill.py"
sys.path.insert(0, str(REPO / "examples"))
import run_image_distill  # noqa: E402


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for name in ("a", "b", "c"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(4):
                PILImage.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    root / "data" / split / name / f"{i}.png"
                )
    out = {"data": str(root / "data")}
    for name, labels, wide in (("student", 3, False), ("teacher", 3, True), ("teacher7", 7, True)):
        model = tiny_resnet(labels, wide=wide, seed=1)
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _argv(folders, out, *extra):
    return ["--dataset", folders["data"], "--output_dir", str(out), "--max_steps", "2", "--report_to", "none",
            "--use_cpu", "--per_device_train_batch_size", "4", "--save_strategy", "no", *extra]  # fmt: skip


def test_help_is_a_page_with_hfkds_groups_first(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    # Classification, segmentation and label-free flags (grew from 220 with the segmentation task, to 255 with the
    # copies per image, --views_per_image, --view_augments, --view_placement, and the label-free task's).
    assert len(lines) < 265
    titles = [line.rstrip(":") for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles[1:] == ["models", "loss", "data", "recipe and optimisation", "output",
                          "training (transformers TrainingArguments)"]  # fmt: skip
    for needle in ("--config RECIPE.yaml", "--student_model_name_or_path, --student, --model_name_or_path MODEL",
                   "--loss ce", "--help-all", "Set student_pretrained to False"):  # fmt: skip
        assert needle in text, needle
    assert "--adam_beta1" not in text and "--learning_rate" in text
    with pytest.raises(SystemExit):
        parse_args(["--help-all"])
    assert "--adam_beta1" in capsys.readouterr().out


def test_unknown_and_missing_flags_are_one_line():
    unknown = _run("--student", "x", "--lr", "0.1", "--learnig_rate", "3")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "--lr (did you mean --learning_rate?)" in unknown.stderr
    assert "--learnig_rate (did you mean --learning_rate" in unknown.stderr
    missing = _run("--loss", "kd")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "missing --student_model_name_or_path (or --student, --model_name_or_path)" in missing.stderr


def test_a_recipe_sets_defaults_even_of_required_flags_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "student_model_name_or_path: from-recipe\nteacher_model_name_or_path: [a, b]\nlearning_rate: 0.3\n"
        "distill_loss_kwargs: {temperature: 2}\n"
    )
    model_args, _, _, args, path = build_parser().parse(["--config", str(recipe), "--output_dir", "o"])
    assert model_args.student_model_name_or_path == "from-recipe" and path == str(recipe)
    assert args.teacher_model_name_or_path == ["a", "b"] and args.learning_rate == 0.3
    assert args.distill_loss_kwargs == {"temperature": 2}
    model_args, _, _, args, _ = build_parser().parse([
        "--config", str(recipe), "--output_dir", "o", "--student", "cli", "--teacher", "c", "--learning_rate",
        "0.1", "--teacher=d", "e",
    ])  # fmt: skip
    assert model_args.student_model_name_or_path == "cli" and args.learning_rate == 0.1
    assert args.teacher_model_name_or_path == ["c", "d", "e"]  # every --teacher of the command line, no recipe's
    only = build_parser().parse(["--config", str(recipe), "--output_dir", "o", "--teacher", "c"])[3]
    assert only.teacher_names == ["c"]


def test_transformers_example_flags_are_accepted(folders):
    parser = build_parser()
    model_args, data_args, run_args, args, _ = parser.parse([
        "--model_name_or_path", folders["student"], "--dataset_name", "beans", "--image_column_name", "img",
        "--label_column_name", "y", "--ignore_mismatched_sizes", "--do_train", "--do_eval", "--output_dir", "o",
        "--train_dir", "t", "--validation_dir", "v",
    ])  # fmt: skip
    assert model_args.student_model_name_or_path == folders["student"] and data_args.dataset == "beans"
    assert (data_args.image_column, data_args.label_column) == ("img", "y") and model_args.ignore_mismatched_sizes
    assert args.do_train and args.do_eval and (data_args.train_dir, data_args.validation_dir) == ("t", "v")


def test_loss_names_and_kwarg_types(tmp_path):
    assert DistillationArguments(output_dir=str(tmp_path), distill_loss="DKD").distill_loss == "dkd"
    with pytest.raises(ValueError, match=r"`temperature` must be a number, got 'four' \(str\)"):
        DistillationArguments(output_dir=str(tmp_path), distill_loss_kwargs='{"temperature": "four"}')
    with pytest.raises(KeyError, match="Or 'ce'"):
        DistillationArguments(output_dir=str(tmp_path), distill_loss="kdd")
    with pytest.raises(ValueError, match="pip install tensorboard"):
        DistillationArguments(output_dir=str(tmp_path), report_to="tensorboard")


def test_offline_hub_models_and_foreign_label_spaces_fail_before_loading(folders, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'resnet-50' \(microsoft/resnet-50\) is neither a local folder nor in the "):
        run_image_distill.main(_argv(folders, tmp_path / "a", "--student", "resnet-50", "--loss", "ce"))
    loaded = []
    original = distill.load_image_classifier  # the example loads its models with hfkd distill's step
    spy = lambda *a, **k: loaded.append(a) or original(*a, **k)  # noqa: E731
    monkeypatch.setattr(distill, "load_image_classifier", spy)
    with pytest.raises(ValueError, match="predicts 7 classes but the student"):
        run_image_distill.main(_argv(folders, tmp_path / "b", "--student", folders["student"], "--teacher",
                                     folders["teacher7"], "--loss", "kd"))  # fmt: skip
    assert loaded == []  # refused from the teacher's config: no weights were loaded
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="has 7 classes and the data has 3; --ignore_mismatched_sizes false"):
        run_image_distill.main(_argv(folders, tmp_path / "c", "--student", folders["teacher7"], "--loss", "ce",
                                     "--ignore_mismatched_sizes", "false"))  # fmt: skip
    assert loaded == [] and not (tmp_path / "c").exists()


def test_a_student_from_scratch_gets_a_learning_rate_that_trains(folders, caplog):
    *_, args, _ = parse_args(["--student", "resnet10t", "--student_pretrained", "false", "--output_dir", "o"])
    assert args.learning_rate == 1e-3
    *_, args, _ = parse_args(["--student", "resnet10t", "--student_pretrained", "false", "--output_dir", "o",
                              "--optim", "sgd"])  # fmt: skip
    assert args.learning_rate == 0.05
    *_, args, _ = parse_args(["--student", "resnet10t", "--student_pretrained", "false", "--output_dir", "o",
                              "--learning_rate", "5e-5"])  # fmt: skip
    assert args.learning_rate == 5e-5
    *_, args, _ = parse_args(["--student", folders["student"], "--output_dir", "o"])
    assert args.learning_rate == 5e-5  # fine-tuning keeps the Trainer's default


def test_image_sizes_and_feature_losses_across_sizes(folders, tmp_path, caplog):
    with caplog.at_level("INFO", logger="hfkd"):
        run_image_distill.main(_argv(folders, tmp_path / "fit", "--student", folders["student"], "--teacher",
                                     folders["teacher"], "--loss", "fitnet", "--image_size", "24",
                                     "--teacher_image_size", "32"))  # fmt: skip
    assert "Input sizes: student 24x24, teacher 32x32" in caplog.text
    assert json.loads((tmp_path / "fit" / "distill_config.json").read_text())["distill_loss"] == "fitnet"


def test_an_eval_strategy_alone_still_trains_and_evaluates(folders, tmp_path):
    # transformers sets do_eval itself when eval_strategy is not "no": that must not make the run evaluation-only.
    out = tmp_path / "steps"
    metrics = run_image_distill.main(_argv(folders, out, "--student", folders["student"], "--teacher",
                                           folders["teacher"], "--loss", "kd", "--eval_strategy", "steps",
                                           "--eval_steps", "1"))  # fmt: skip
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert metrics["eval_accuracy"] == json.loads((out / "eval_results.json").read_text())["eval_accuracy"]
    # The card's training-results table: one row per evaluation during training, with its own numbers.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    end = next(i for i, e in enumerate(history) if "train_runtime" in e)
    during = [e for e in history[:end] if "eval_accuracy" in e]
    card = (out / "README.md").read_text()
    table = card.split("### Training results", 1)[1].split("## Distillation", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1] for row in rows] == [str(e["step"]) for e in during] == ["1", "2"]
    assert [row.split(" | ")[4] for row in rows] == [f"{100 * e['eval_accuracy']:.2f}" for e in during]


def test_do_eval_alone_evaluates_a_saved_student(folders, tmp_path):
    metrics = run_image_distill.main(_argv(folders, tmp_path / "eval", "--student", folders["student"], "--teacher",
                                           folders["teacher"], "--loss", "kd", "--do_eval"))  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {"eval_results.json", "teacher_eval_results.json"} <= written
    assert "model.safetensors" not in written and "trainer_state.json" not in written
    with pytest.raises(ValueError, match="--do_eval without --do_train evaluates a trained student"):
        run_image_distill.main(_argv(folders, tmp_path / "e2", "--student", "resnet10t", "--student_pretrained",
                                     "false", "--loss", "ce", "--do_eval"))  # fmt: skip


def test_drop_path_and_interpolation_flags_reach_the_saved_student(folders, tmp_path):
    out = tmp_path / "dp"
    run_image_distill.main(_argv(folders, out, "--student", "resnet10t", "--student_pretrained", "false", "--teacher",
                                 folders["teacher"], "--loss", "kd", "--image_size", "24", "--interpolation",
                                 "nearest", "--drop_path", "0.1", "--mean", "0.5", "--std", "0.25"))  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"] == {"drop_path_rate": 0.1}
    saved = {key: config["pretrained_cfg"][key] for key in ("input_size", "interpolation", "mean", "std")}
    assert saved == {"input_size": [3, 24, 24], "interpolation": "nearest", "mean": [0.5] * 3, "std": [0.25] * 3}
    assert "- drop_path_rate: 0.1" in (out / "README.md").read_text()
    # A student with no stochastic depth is refused before anything is written; bad values when parsed.
    with pytest.raises(ValueError, match="has no drop_path_rate"):
        run_image_distill.main(_argv(folders, tmp_path / "no", "--student", folders["student"], "--loss", "ce",
                                     "--drop_path_rate", "0.1"))  # fmt: skip
    assert not (tmp_path / "no").exists()
    for flag, value, needle in (("--drop_path_rate", "1.5", "must be in [0, 1)"),
                                ("--interpolation", "lanczos", "must be one of bilinear, bicubic, nearest"),
                                ("--std", "0", "--image_std takes 1 or 3 non-zero values")):  # fmt: skip
        failed = _run("--student", "resnet10t", "--output_dir", str(tmp_path / "bad"), flag, value)
        assert failed.returncode == 1 and needle in failed.stderr and not (tmp_path / "bad").exists()


def test_teacher_input_student_feeds_the_teachers_the_students_tensor(folders, tmp_path):
    argv = _argv(folders, tmp_path / "ti", "--student", folders["student"], "--teacher", folders["teacher"], "--loss",
                 "kd", "--image_size", "24", "--teacher_input", "student")  # fmt: skip
    model_args, data_args, run_args, args, _ = parse_args(argv)
    student_spec, teacher_specs = run_image_distill.resolve_models(model_args, args)
    data = load_data(data_args, run_args, args, distilling=True)
    models = distill.load_models(student_spec, teacher_specs, model_args, args, data.names)
    batches = {}
    for teacher_input in ("own", "student"):
        data_args.teacher_input = teacher_input
        splits = prepare_splits(data, data_args, args, models, None)
        batches[teacher_input] = {split: splits[split][:2] for split in ("train", "eval")}
    own, student = batches["own"], batches["student"]
    # Its own preprocessing: 16 px (its processor's) beside the student's 24 px, in training and in evaluation.
    assert own["train"]["pixel_values"][0].shape == (3, 24, 24)
    assert own["train"]["teacher_pixel_values"][0].shape == (3, 16, 16)
    # The student's tensor in training (the batch carries no pixels of the teacher's); its own view to evaluate it.
    assert "teacher_pixel_values" not in student["train"]
    torch.testing.assert_close(student["train"]["pixel_values"][0], own["train"]["pixel_values"][0])
    torch.testing.assert_close(student["eval"]["teacher_pixel_values"][0], own["eval"]["teacher_pixel_values"][0])
    metrics = run_image_distill.main(argv)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    # A teacher with a fixed input size must match the student's tensor; a cache holds its own views.
    with pytest.raises(ValueError, match=r"takes 32 px images.*--image_size 32"):
        check_teachers_take([tiny_vit()], dataclasses.replace(ImageConfig(), size=(24, 24)))
    check_teachers_take([tiny_vit()], ImageConfig(size=32))
    for extra, needle in ((("--teacher_cache_dir", "c"), "holds the outputs of the teacher's own views"),
                          (("--teacher_image_size", "32"), "cannot apply")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            parse_args([*argv, *extra])


def test_mixup_and_cutmix_from_the_command_line(folders, tmp_path):
    out = tmp_path / "mix"
    run_image_distill.main(_argv(folders, out, "--student", folders["student"], "--teacher", folders["teacher"],
                                 "--loss", "dist", "--mixup", "0.8", "--cutmix", "1.0"))  # fmt: skip
    card = (out / "README.md").read_text()
    assert "- mixup_alpha: 0.8" in card and "- cutmix_alpha: 1.0" in card
    with pytest.raises(ValueError, match="--labelled_samples leaves samples without one"):
        parse_args(_argv(folders, tmp_path / "m2", "--student", "s", "--teacher", "t", "--loss", "kd", "--mixup",
                         "0.8", "--labelled_samples", "4"))  # fmt: skip
    failed = _run(*_argv(folders, tmp_path / "m3", "--student", "s", "--teacher", "t", "--loss", "dkd", "--cutmix",
                         "1"))  # fmt: skip
    assert failed.returncode == 1 and "reads the class labels" in failed.stderr and not (tmp_path / "m3").exists()
