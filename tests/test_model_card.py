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
            {
                "distill_lr_decay_epochs": 2.4,
                "distill_lr_gamma": 0.97,
                "distill_lr_warmup_epochs": 3,
                "distill_lr_warmup_lr": 1e-6,
            },
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


# ------------------------------------------------------------------------------------------- semantic segmentation

SEG_STUDENT = {"eval_mean_iou": 0.7402, "eval_mean_accuracy": 0.8123, "eval_overall_accuracy": 0.9551}
SEG_TEACHER = {
    "teacher_eval_mean_iou": 0.7812, "teacher_eval_mean_accuracy": 0.8501, "teacher_eval_overall_accuracy": 0.9612
}  # fmt: skip
SEG_BASELINE = {"eval_mean_iou": 0.7021, "eval_mean_accuracy": 0.7844, "eval_overall_accuracy": 0.9488}
SEG_COLUMNS = ["mIoU (%)", "mean accuracy (%)", "pixel accuracy (%)"]


def _segmentation_info(**overrides) -> ModelCardInfo:
    kwargs = {
        "model_name": "deeplabv3-r18-cwd",
        "student_name": "deeplabv3-resnet18",
        "teacher_name": "my-org/deeplabv3-r101",
        "teacher_revision": "a1b2c3d",
        "loss_key": "cwd",
        "dataset_name": "my-org/cityscapes",
        "task": "semantic-segmentation",
        "student_model_type": "hfkd_smp",
        "student_metrics": SEG_STUDENT,
        "teacher_metrics": SEG_TEACHER,
        "baseline_metrics": SEG_BASELINE,
    }
    kwargs.update(overrides)
    return ModelCardInfo(**kwargs)


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_segmentation_card_results_and_model_index(tmp_path):
    log = [
        {"loss": 1.5, "step": 10, "epoch": 1.0},
        {"eval_mean_iou": 0.5, "eval_mean_accuracy": 0.6, "eval_overall_accuracy": 0.9, "eval_loss": 0.4, "step": 10,
         "epoch": 1.0},
        {"train_runtime": 1.0, "step": 10},
    ]  # fmt: skip
    build_model_card(_segmentation_info(log_history=log), output_dir=str(tmp_path))
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    results = _section(readme, "Results")
    assert f"| Model | {' | '.join(SEG_COLUMNS)} |" in results
    assert _row(results, "Student (this model)")[1:] == ["74.02", "81.23", "95.51"]
    teacher = _row(results, "Teacher")
    assert "my-org/deeplabv3-r101" in teacher[0] and teacher[1:] == ["78.12", "85.01", "96.12"]
    assert _row(results, "CE-only baseline")[1:] == ["70.21", "78.44", "94.88"]
    assert _row(results, "Δ")[1:] == ["+3.81", "+2.79", "+0.63"]
    assert "Top-1" not in readme and "Top-5" not in readme
    training = results.split("### Training results", 1)[1]
    assert f"| Validation loss | {' | '.join(SEG_COLUMNS)} |" in training
    assert _row(training, "1.00")[1:] == ["10", "1.5000", "0.4000", "50.00", "60.00", "90.00"]
    assert "Task: semantic segmentation (the `image-segmentation` pipeline)." in _section(readme, "Distillation")

    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data["pipeline_tag"] == "image-segmentation"
    assert {"hfkd", "distill-cwd", "image-segmentation", "semantic-segmentation"} <= set(data["tags"])
    assert "image-classification" not in data["tags"]
    assert data["metrics"] == ["mean_iou", "mean_accuracy", "overall_accuracy"]
    (result,) = data["model-index"][0]["results"]
    assert result["task"] == {"type": "image-segmentation", "name": "Semantic Segmentation"}
    assert result["dataset"] == {"name": "my-org/cityscapes", "type": "my-org/cityscapes"}
    metrics = {metric["type"]: (metric["name"], metric["value"]) for metric in result["metrics"]}
    assert metrics == {"mean_iou": ("mIoU", 0.7402), "mean_accuracy": ("mean accuracy", 0.8123),
                       "overall_accuracy": ("pixel accuracy", 0.9551)}  # fmt: skip


@pytest.mark.parametrize(("model_type", "imports_smp"), [("hfkd_smp", True), ("segformer", False), (None, False)])
def test_segmentation_usage_imports_hfkd_smp_only_for_its_students(tmp_path, model_type, imports_smp):
    card = build_model_card(_segmentation_info(student_model_type=model_type), output_dir=str(tmp_path / "out"))
    usage = _section(card.text, "How to use")
    assert 'pipeline("image-segmentation", model="out")' in usage
    assert "AutoImageProcessor.from_pretrained" in usage
    assert 'AutoModelForSemanticSegmentation.from_pretrained("out")' in usage
    assert "interpolate(logits, size=image.size[::-1]" in usage and "argmax(dim=1)" in usage
    assert ("import hfkd.models.smp" in usage) is imports_smp
    assert usage.count("\nimport hfkd.models.smp  #") == (2 if imports_smp else 0)  # in both snippets
    assert "image-classification" not in usage and "AutoModelForImageClassification" not in usage


def test_registering_module_names_the_smp_model_type():
    from hfkd.hub.model_card import REGISTERING_MODULES
    from hfkd.models import smp

    assert REGISTERING_MODULES[smp.MODEL_TYPE] == smp.__name__


def test_every_task_has_usage_snippets():
    from hfkd.tasks.base import TASK_NAMES
    from hfkd.tasks.registry import get_task
    from hfkd.utils.errors import UnknownNameError

    for name in TASK_NAMES:
        try:
            get_task(name)
        except UnknownNameError:  # a task hfkd does not train yet
            continue
        assert resources.files("hfkd.hub").joinpath(f"templates/usage-{name}.md").is_file(), name


def test_segmentation_metrics_must_be_fractions():
    with pytest.raises(ValueError, match="fraction"):
        build_model_card(_segmentation_info(student_metrics={"eval_mean_iou": 74.02}))


def _distill_config(**changes) -> dict:
    config = {
        "distill_loss": "kd",
        "distill_loss_kwargs": {"temperature": 1.0},
        "distill_ce_weight": 1.0,
        "distill_weight": 3.0,
        "teacher": {"name_or_path": "teacher", "local": True, "revision": None},
        "recipe": None,
        "data": {"dataset": "my-org/cityscapes", "crop_size": [512, 1024]},
        "task": "semantic-segmentation",
    }
    config.update(changes)
    return config


def test_card_of_a_segmentation_run_says_the_task_and_the_crop(tmp_path):
    from transformers import SegformerConfig

    from hfkd import DistillationArguments
    from hfkd.models.smp import SmpSegmentationConfig

    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    student_config = SmpSegmentationConfig(num_labels=3)
    info = ModelCardInfo.for_run(_distill_config(), args, student_config, student_metrics=SEG_STUDENT)
    assert info.task == "semantic-segmentation" and info.student_model_type == "hfkd_smp"
    build_model_card(info, output_dir=args.output_dir)
    readme = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "\n- train_crop: 512 x 1024\n" in _section(readme, "Training hyperparameters")
    assert "Task: semantic segmentation" in readme and "import hfkd.models.smp" in readme
    assert _row(readme, "Student (this model)")[1:] == ["74.02", "81.23", "95.51"]
    assert ModelCard.load(tmp_path / "out" / "README.md").data.pipeline_tag == "image-segmentation"

    segformer = ModelCardInfo.for_run(_distill_config(data={"crop_size": 768}), args, SegformerConfig())
    segformer = build_model_card(segformer)
    assert "- train_crop: 768 x 768" in segformer.text and "import hfkd.models.smp" not in segformer.text

    # A run recorded before `distill_config.json` held its task, and without a crop: image classification.
    older = _distill_config(data={"dataset": "uoft-cs/cifar100"})
    del older["task"]
    card = build_model_card(ModelCardInfo.for_run(older, args, student_config))
    assert card.data.pipeline_tag == "image-classification" and "train_crop" not in card.text
    assert "| Model | Top-1 (%) | Top-5 (%) |" not in card.text  # no metrics given: no table
    assert "Task: image classification" in card.text


def test_segmentation_card_snippets_run_on_the_saved_student(tmp_path, monkeypatch):
    """The card's usage code, as written, loads an hfkd smp student saved with a segmentation image processor."""
    import re

    import numpy as np
    import torch
    from PIL import Image as PILImage
    from transformers import SegformerImageProcessor

    from hfkd.models.smp import reference_network

    torch.manual_seed(0)
    student = tmp_path / "student"
    model = reference_network("deeplabv3-resnet18", num_labels=3, id2label={0: "bg", 1: "a", 2: "b"}, pretrained=False)
    model.eval().save_pretrained(student)
    SegformerImageProcessor(size={"height": 32, "width": 32}, do_reduce_labels=False).save_pretrained(student)
    card = build_model_card(_segmentation_info(), output_dir=str(student))
    PILImage.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    snippets = re.findall(r"```python\n(.*?)```", _section(card.text, "How to use"), re.DOTALL)
    assert len(snippets) == 2
    with_pipeline, with_classes = {}, {}
    exec(snippets[0].replace("path/to/image.jpg", "image.png"), with_pipeline)
    exec(snippets[1].replace("path/to/image.jpg", "image.png"), with_classes)
    segments = with_pipeline["segments"]
    assert segments and {s["label"] for s in segments} <= {"bg", "a", "b"} and segments[0]["mask"].size == (40, 30)
    assert tuple(with_classes["segmentation"].shape) == (30, 40)  # (height, width) of the image


def test_grayscale_students_card_converts_to_their_mode_and_runs(tmp_path, monkeypatch):
    """A 1-channel student (the demos'): the card's code reads the image as "L" and runs on the saved folder, and the
    pipeline, which reads every image as RGB (and fails on it), is left out; an RGB student keeps both."""
    import re

    import numpy as np
    import torch
    from PIL import Image as PILImage
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor, pipeline

    from hfkd.training.arguments import DistillationArguments

    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    classify = _distill_config(task="image-classification", data={"dataset": "fashion-mnist"})
    labels = {"id2label": {0: "a", 1: "b"}, "label2id": {"a": 0, "b": 1}}
    gray, rgb = ResNetConfig(num_channels=1, **labels), ResNetConfig(num_channels=3, **labels)
    assert ModelCardInfo.for_run(classify, args, gray).image_mode == "L"
    assert ModelCardInfo.for_run(classify, args, rgb).image_mode == "RGB"
    PILImage.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for config, mode in ((gray, "L"), (rgb, "RGB")):
        folder = tmp_path / mode
        ResNetForImageClassification(config).eval().save_pretrained(folder)
        channels = config.num_channels
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * channels, image_std=[0.5] * channels
                          ).save_pretrained(folder)  # fmt: skip
        info = ModelCardInfo.for_run(classify, args, config)
        usage = _section(build_model_card(info, output_dir=str(folder)).text, "How to use")
        snippets = re.findall(r"```python\n(.*?)```", usage, re.DOTALL)
        classes = next(s for s in snippets if "AutoImageProcessor" in s)
        assert f'.convert("{mode}")' in classes
        namespace = {}
        exec(classes.replace("path/to/image.jpg", "image.png"), namespace)  # noqa: S102
        assert namespace["logits"].shape == (1, 2)
        if mode == "L":
            assert not any("pipeline(" in s for s in snippets) and "reads every image as RGB" in usage
            with pytest.raises(ValueError, match="channel dimension"):  # why the card leaves it out
                pipeline("image-classification", model=str(folder))("image.png")
        else:
            assert any("pipeline(" in s for s in snippets)
            assert pipeline("image-classification", model=str(folder))("image.png")[0]["label"] in ("a", "b")
