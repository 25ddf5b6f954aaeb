"""Model card: Hub metadata, results table, distillation section, usage snippets; offline."""

from importlib import resources

import pytest
from huggingface_hub import ModelCard

from hfkd.hub.model_card import ModelCardInfo, build_model_card
from hfkd.losses.base import PaperRef

PAPER = PaperRef(
    title="Distilling the Knowledge in a Neural Network",
    authors="Geoffrey Hinton, Oriol Vinyals, Jeff Dean",
    venue="NIPS 2014 Deep Learning Workshop",
    arxiv_id="1503.02531",
    bibtex="@article{hinton2015distilling,\n  title={Distilling the Knowledge in a Neural Network},\n  year={2015}\n}",
)
STUDENT = {"eval_accuracy": 0.7612, "eval_top5_accuracy": 0.9321, "eval_loss": 1.02}
TEACHER = {"eval_accuracy": 0.8003, "eval_top5_accuracy": 0.9507}
BASELINE = {"eval_accuracy": 0.7489, "eval_top5_accuracy": 0.9288}


def _info(**overrides) -> ModelCardInfo:
    kwargs = {
        "model_name": "resnet18-kd-cifar100",
        "student_name": "microsoft/resnet-18",
        "teacher_name": "microsoft/resnet-50",
        "teacher_revision": "a1b2c3d",
        "loss_key": "kd",
        "loss_kwargs": {"temperature": 4.0},
        "paper": PAPER,
        "ce_weight": 0.1,
        "distill_weight": 0.9,
        "dataset_name": "uoft-cs/cifar100",
        "student_metrics": STUDENT,
        "teacher_metrics": TEACHER,
        "baseline_metrics": BASELINE,
        "hyperparameters": {"learning_rate": 5e-05, "num_train_epochs": 3, "seed": 42, "lr_scheduler_type": None},
    }
    kwargs.update(overrides)
    return ModelCardInfo(**kwargs)


def _row(text: str, label: str) -> list[str]:
    """The cells of the results-table row whose first cell starts with `label`."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(label):
            return cells
    raise AssertionError(f"no table row {label!r} in:\n{text}")


def _metrics_by_name(card_dict: dict) -> dict[str, float]:
    (entry,) = card_dict["model-index"]
    (result,) = entry["results"]
    return {metric["name"]: metric["value"] for metric in result["metrics"]}


def test_template_is_package_data():
    assert resources.files("hfkd.hub").joinpath("templates/model_card.md").is_file()


def test_card_written_and_round_trips(tmp_path):
    card = build_model_card(_info(license="apache-2.0", extra_tags=["cifar100"]), output_dir=str(tmp_path))
    path = tmp_path / "README.md"
    assert path.is_file()

    loaded = ModelCard.load(path)
    assert loaded.content == card.content
    data = loaded.data.to_dict()
    assert data == card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert {"hfkd", "knowledge-distillation", "distill-kd", "image-classification", "cifar100"} <= set(data["tags"])
    assert data["base_model"] == "microsoft/resnet-18"
    assert data["datasets"] == ["uoft-cs/cifar100"]
    assert data["metrics"] == ["accuracy"]
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "image-classification"
    assert data["model-index"][0]["name"] == "resnet18-kd-cifar100"
    assert data["model-index"][0]["results"][0]["dataset"]["type"] == "uoft-cs/cifar100"
    # model-index holds fractions, exactly as evaluated.
    assert _metrics_by_name(data) == {"Top-1 Accuracy": 0.7612, "Top-5 Accuracy": 0.9321}


def test_results_table(tmp_path):
    text = build_model_card(_info()).text
    assert "| Model | Top-1 (%) | Top-5 (%) |" in text
    assert _row(text, "Student (this model)")[1:] == ["76.12", "93.21"]
    teacher = _row(text, "Teacher")
    assert "microsoft/resnet-50" in teacher[0]
    assert teacher[1:] == ["80.03", "95.07"]
    assert _row(text, "CE-only baseline")[1:] == ["74.89", "92.88"]
    # Δ in percentage points: 76.12 - 74.89 = +1.23, 93.21 - 92.88 = +0.33.
    assert _row(text, "Δ")[1:] == ["+1.23", "+0.33"]


def test_unknown_metrics_render_as_dash():
    text = build_model_card(
        _info(student_metrics={"eval_accuracy": 0.5}, teacher_metrics=None, baseline_metrics={"eval_accuracy": 0.0})
    ).text
    assert _row(text, "Student (this model)")[1:] == ["50.00", "–"]
    assert _row(text, "Teacher")[1:] == ["–", "–"]
    assert _row(text, "CE-only baseline")[1:] == ["0.00", "–"]
    assert _row(text, "Δ")[1:] == ["+50.00", "–"]


def test_distillation_section_and_citation():
    text = build_model_card(_info()).text
    assert "Teacher revision: `a1b2c3d`" in text
    assert "| `temperature` | `4.0` |" in text
    assert "`loss = 0.1 × CE + 0.9 × KD`" in text
    assert "- learning_rate: 5e-05" in text and "- seed: 42" in text
    assert "lr_scheduler_type" not in text
    assert f"```bibtex\n{PAPER.bibtex}\n```" in text
    assert PAPER.url in text
    assert "hfkd" in text.split("## Citation")[1]
    assert 'pipeline("image-classification", model="resnet18-kd-cifar100")' in text


def test_no_none_when_pieces_missing(tmp_path):
    info = ModelCardInfo(
        model_name="resnet18-ce", student_name="microsoft/resnet-18", loss_key="ce", distill_weight=0.0
    )
    card = build_model_card(info, output_dir=str(tmp_path))
    content = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "None" not in content and "null" not in content
    assert "No evaluation results yet." in card.text
    assert "no teacher" in card.text.lower()
    assert "```bibtex" not in card.text
    data = card.data.to_dict()
    assert "model-index" not in data and "datasets" not in data


def test_no_none_with_metrics_but_no_teacher_or_baseline():
    card = build_model_card(
        _info(teacher_name=None, teacher_revision=None, teacher_metrics=None, baseline_metrics=None, paper=None)
    )
    assert "None" not in str(card)
    assert "Teacher (" not in card.text and "CE-only baseline" not in card.text and "Δ" not in card.text
    assert _metrics_by_name(card.data.to_dict()) == {"Top-1 Accuracy": 0.7612, "Top-5 Accuracy": 0.9321}


def test_local_paths_stay_out_of_metadata(tmp_path, monkeypatch):
    student_dir = tmp_path / "checkpoints" / "student"
    data_dir = tmp_path / "images"
    student_dir.mkdir(parents=True)
    data_dir.mkdir()
    card = build_model_card(_info(student_name=str(student_dir), dataset_name=str(data_dir)))
    data = card.data.to_dict()
    assert "base_model" not in data and "datasets" not in data
    assert str(tmp_path) not in card.data.to_yaml()
    assert data["model-index"][0]["results"][0]["dataset"] == {"name": "images", "type": "imagefolder"}
    # The text names the local student by its folder name, never by the machine's path.
    assert "a local checkpoint (`student`)" in card.text and str(tmp_path) not in card.text

    # A relative folder that looks like a Hub id is local, as it is for `from_pretrained` and `load_dataset`.
    (tmp_path / "my-org" / "resnet").mkdir(parents=True)
    (tmp_path / "my-org" / "cifar").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    data = build_model_card(_info(student_name="my-org/resnet", dataset_name="my-org/cifar")).data.to_dict()
    assert "base_model" not in data and "datasets" not in data


@pytest.mark.parametrize("dataset_name", ["imagefolder", "./data/train", "~/data", "data/train.csv"])
def test_dataset_formats_and_paths_are_not_hub_datasets(dataset_name):
    assert "datasets" not in build_model_card(_info(dataset_name=dataset_name)).data.to_dict()


@pytest.mark.parametrize(
    ("student_name", "expected"),
    [("resnet18", None), ("hf-hub:timm/resnet18.a1_in1k", "timm/resnet18.a1_in1k"), ("local-dir:/ckpt", None)],
)
def test_base_model_only_for_namespaced_hub_ids(student_name, expected):
    data = build_model_card(_info(student_name=student_name, is_timm=True)).data.to_dict()
    assert data.get("base_model") == expected


def test_timm_snippet_only_for_timm_students(tmp_path):
    out = str(tmp_path / "out")
    card = build_model_card(_info(is_timm=True, hub_model_id="me/resnet18-kd"), output_dir=out)
    assert card.data.library_name == "timm"
    assert 'timm.create_model("hf-hub:me/resnet18-kd", pretrained=True)' in card.text
    assert "local-dir" not in card.text and str(tmp_path) not in card.text  # a pushed card: the Hub copy only
    unpushed = build_model_card(_info(is_timm=True), output_dir=out)
    assert 'timm.create_model("local-dir:out", pretrained=True)' in unpushed.text
    assert 'pipeline("image-classification", model="me/resnet18-kd")' in card.text
    assert "AutoModelForImageClassification" in card.text

    card = build_model_card(_info(), output_dir=out)
    assert card.data.library_name == "transformers"
    assert "timm.create_model" not in card.text and "With timm" not in card.text
    assert 'pipeline("image-classification", model="out")' in card.text and str(tmp_path) not in card.text


def test_no_output_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_model_card(_info())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [{"eval_accuracy": 76.12}, {"eval_top5_accuracy": -0.1}, {"eval_accuracy": "0.7"}])
def test_rejects_non_fraction_accuracy(bad):
    with pytest.raises(ValueError, match="fraction"):
        build_model_card(_info(student_metrics=bad))


def test_rejects_empty_model_name():
    with pytest.raises(ValueError, match="model_name"):
        build_model_card(_info(model_name=""))


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"lr_scheduler_type": "cosine"}, "cosine"),
        (
            {"lr_scheduler_type": "constant", "distill_lr_milestones": [150, 180, 210]},
            "multi-step: x0.1 after epochs 150, 180, 210",
        ),
        (
            {"distill_lr_decay_epochs": 2.4, "distill_lr_gamma": 0.97, "distill_lr_warmup_epochs": 3,
             "distill_lr_warmup_lr": 1e-6},
            "step: x0.97 every 2.4 epochs, after a warm-up of 3 epochs in stairs from 1e-06",
        ),
    ],
    ids=["trainer", "milestones", "dist-step"],
)
def test_the_card_names_the_schedule_that_ran(tmp_path, schedule, expected):
    """hfkd's schedules replace the Trainer's `lr_scheduler_type` (the recipes set it to constant): the card names
    the one the run used, not the Trainer's setting that it ignored."""
    from hfkd import DistillationArguments
    from hfkd.hub.model_card import training_hyperparameters

    args = DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **schedule)
    assert training_hyperparameters(args)["lr_scheduler_type"] == expected
