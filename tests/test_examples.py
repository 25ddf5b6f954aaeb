"""examples/run_image_distill.py end to end, offline: tiny local models, an imagefolder in tmp_path."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value
from huggingface_hub import ModelCard
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, ViTImageProcessor, pipeline

from .testing_utils import tiny_resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

CLASSES = ["cat", "dog", "fox"]


def _image(rng: np.random.Generator, size: int = 32) -> PILImage.Image:
    return PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("validation", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                _image(rng).save(folder / f"{i}.png")
    return str(root)


def _save_model(folder: Path, num_labels: int, *, wide: bool, seed: int, size: int = 32) -> str:
    model = tiny_resnet(num_labels, wide=wide, seed=seed)
    model.config.id2label = (
        dict(enumerate(CLASSES[:num_labels])) if num_labels == len(CLASSES) else model.config.id2label
    )
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "student": _save_model(root / "student", 5, wide=False, seed=1),  # 5-class head: replaced for 3 classes
        "teacher": _save_model(root / "teacher", 3, wide=True, seed=2, size=40),  # own resolution
        "teacher7": _save_model(root / "teacher7", 7, wide=True, seed=3),
    }


def _argv(out: Path, image_folder: str, *extra: str) -> list[str]:
    return [
        "--dataset", image_folder, "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
        "--disable_tqdm", "true", "--seed", "0", *extra,
    ]  # fmt: skip


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_distillation_run_writes_a_loadable_student_and_card(tmp_path, image_folder, models):
    out = tmp_path / "run"
    metrics = run_image_distill.main(
        _argv(out, image_folder, "--student", models["student"], "--teacher", models["teacher"], "--loss", "dkd",
              "--loss_kwargs", '{"beta": 2.0}')
    )  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "distill_config.json",
                 "all_results.json", "eval_results.json", "teacher_eval_results.json"):  # fmt: skip
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    weights = load_file(out / "model.safetensors")
    assert weights["classifier.1.weight"].shape == (3, 16)  # fresh 3-class head
    teacher_shapes = {tuple(v.shape) for v in load_file(Path(models["teacher"]) / "model.safetensors").values()}
    student_shapes = {tuple(v.shape) for v in weights.values()}
    assert not (teacher_shapes - {tuple(v.shape) for v in tiny_resnet(3).state_dict().values()}) & student_shapes
    distill = json.loads((out / "distill_config.json").read_text())
    assert distill["distill_loss"] == "dkd" and distill["distill_loss_kwargs"]["beta"] == 2.0
    assert distill["teacher"]["name_or_path"] == "teacher" and distill["teacher"]["local"]  # by name, no path

    reloaded = AutoModelForImageClassification.from_pretrained(out)
    assert reloaded.config.num_labels == 3
    predictions = pipeline("image-classification", model=str(out))(_image(np.random.default_rng(1)))
    assert {p["label"] for p in predictions} <= set(CLASSES)

    card = ModelCard.load(out / "README.md")
    assert {"hfkd", "knowledge-distillation", "distill-dkd"} <= set(card.data.tags)
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["Top-1 Accuracy"] == pytest.approx(metrics["eval_accuracy"])
    teacher_metrics = json.loads((out / "teacher_eval_results.json").read_text())
    assert f"{100 * teacher_metrics['teacher_eval_accuracy']:.2f}" in card.text
    assert "Decoupled Knowledge Distillation" in card.text


def test_ce_run_needs_no_teacher(tmp_path, image_folder, models):
    out = tmp_path / "ce"
    run_image_distill.main(_argv(out, image_folder, "--student", models["student"], "--loss", "ce"))
    assert json.loads((out / "distill_config.json").read_text())["teacher"] is None
    assert not (out / "teacher_eval_results.json").exists()


def test_timm_student_loads_in_timm(tmp_path, image_folder, models):
    out = tmp_path / "timm"
    run_image_distill.main(
        _argv(out, image_folder, "--student", "test_resnet", "--student_pretrained", "false",
              "--teacher", models["teacher"], "--loss", "kd")
    )  # fmt: skip
    model = timm.create_model("local-dir:" + str(out), pretrained=True).eval()
    reloaded = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reloaded(pixel_values=x).logits)


def test_recipe_values_are_defaults_and_flags_win(tmp_path, image_folder, models):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "# a recipe\ndistill_loss: dist\ndistill_loss_kwargs:\n  temperature: 4.0\nlearning_rate: 0.01\n"
        f"student_model_name_or_path: {models['student']}\nteacher_model_name_or_path: {models['teacher']}\n"
    )
    out = tmp_path / "recipe"
    run_image_distill.main(["--config", str(recipe), *_argv(out, image_folder, "--learning_rate", "0.02")])
    distill = json.loads((out / "distill_config.json").read_text())
    assert distill["distill_loss"] == "dist" and distill["distill_loss_kwargs"]["temperature"] == 4.0
    assert distill["recipe"] == "recipe.yaml"  # outside recipes/: its file name, no local path
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.learning_rate == 0.02


def test_push_to_hub_uploads_the_student_and_card(tmp_path, image_folder, models, monkeypatch):
    import transformers.trainer

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls["repo"] = repo_id
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
            calls.setdefault("uploads", []).append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            card = ModelCard.load(Path(folder_path) / "README.md")
            calls["card_tags"] = card.data.tags

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    out = tmp_path / "push"
    run_image_distill.main(
        _argv(out, image_folder, "--student", models["student"], "--teacher", models["teacher"], "--loss", "kd",
              "--push_to_hub", "--hub_model_id", "someone/tiny-kd", "--hub_strategy", "end")
    )  # fmt: skip
    assert calls["repo"] == "someone/tiny-kd"
    repo_id, files = calls["uploads"][-1]
    assert repo_id == "someone/tiny-kd"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files)
    assert "distill-kd" in calls["card_tags"]


@pytest.fixture
def finished_run(tmp_path, image_folder, models) -> Path:
    out = tmp_path / "finished"
    run_image_distill.main(_argv(out, image_folder, "--student", models["student"], "--loss", "ce"))
    return out


@pytest.mark.parametrize(
    "extra,error,match",
    [
        (["--student", "resnet-5O"], ValueError, "resnet-5O"),
        (["--loss", "dkdd"], KeyError, "Did you mean 'dkd'"),
        (["--loss", "dkd", "--loss_kwargs", '{"btea": 2}'], ValueError, r"'dkd'.*'btea'"),
        (["--image_column", "photo"], ValueError, r"photo.*image.*--image_column"),
        (["--teacher", "TEACHER7"], ValueError, r"7 classes.*--loss ce"),
        ([], ValueError, "already holds a finished run"),
    ],
)
def test_bad_input_fails_fast_and_leaves_output_untouched(finished_run, image_folder, models, extra, error, match):
    before = _digest(finished_run)
    extra = [models["teacher7"] if e == "TEACHER7" else e for e in extra]
    argv = _argv(finished_run, image_folder, "--student", models["student"], "--loss", "ce", *extra)
    if extra:
        argv.append("--overwrite_output_dir")
    if "--teacher" in extra and "--loss" not in extra:
        argv += ["--loss", "kd"]
    with pytest.raises(error, match=match):
        run_image_distill.main(argv)
    assert _digest(finished_run) == before


def test_labels_out_of_range(tmp_path, models):
    rng = np.random.default_rng(0)
    # Integer labels 0, 1, 2 and a stray 7: four distinct values, so index 7 is outside the 4 classes.
    features = Features({"image": Image(), "label": Value("int64")})
    bad = Dataset.from_dict({"image": [_image(rng) for _ in range(6)], "label": [0, 1, 2, 0, 1, 7]}, features=features)
    folder = tmp_path / "data"
    DatasetDict({"train": bad, "validation": bad}).save_to_disk(folder)
    with pytest.raises(ValueError, match=r"7"):
        run_image_distill.main(_argv(tmp_path / "out", str(folder), "--student", models["student"], "--loss", "ce"))
    assert not (tmp_path / "out").exists()


def test_recipe_with_unknown_key(tmp_path, image_folder, models):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("distill_loss: kd\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"'learnig_rate'.*did you mean 'learning_rate'"):
        run_image_distill.main(["--config", str(recipe), *_argv(tmp_path / "o", image_folder, "--student", "x")])
