"""`hfkd distill` without labels, end to end on a dozen tiny images: a timm student learns a DINOv2 teacher's
features from a folder of unlabelled images, is scored by k-NN on a labelled folder, and lands on disk as a backbone
whose card's snippets run; what cannot work is refused before any weights load."""

import json
import re

import numpy as np
import pytest
from PIL import Image as PILImage
from transformers import BitImageProcessor

from hfkd.commands.distill import main
from hfkd.utils.errors import UsageError

from .tiny import tiny_teacher

COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_free")
    rng = np.random.default_rng(0)
    (root / "unlabelled").mkdir()
    for i in range(12):
        PILImage.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "unlabelled" / f"{i}.png")
    for name, colour in COLOURS.items():
        (root / "val" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            PILImage.fromarray(pixels).save(root / "val" / name / f"{i}.png")
    teacher = tiny_teacher("dinov2")
    teacher.save_pretrained(root / "dinov2")
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "dinov2"
    )
    return root


def _argv(root, out, *extra):
    return [
        "--teacher", str(root / "dinov2"), "--student", "test_resnet", "--student_pretrained", "false",
        "--image_size", "48", "--train_dir", str(root / "unlabelled"), "--validation_dir", str(root / "val"),
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4", "--report_to", "none", "--use_cpu", "--logging_steps", "1",
        "--disable_tqdm", "true", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def test_the_command_distils_a_backbone_without_labels(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    metrics = main(_argv(setup, out, "--loss", "embed", "--feature_loss", "dense", "--mixup", "0.8"))
    assert 0.0 <= metrics["eval_knn_top1"] <= 1.0 and metrics["eval_loss"] > 0
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_knn_top1"] == metrics["eval_knn_top1"] and "teacher_eval_knn_top1" in results
    record = json.loads((out / "distill_config.json").read_text())
    assert record["task"] == "image-feature-extraction" and record["distill_loss_kwargs"]["feature_loss"] == "dense"
    assert record["data"]["train_labels_read"] is False and record["data"]["eval_labelled"] is True
    assert str(setup) not in json.dumps(record) and record["data"]["source"] == "image folders unlabelled + val"
    assert not (out / "distill_adapters.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "k-NN top-1 (%)" in card
    assert "| Teacher (`dinov2`) |" in card and "(EMBED + DENSE)" in card and "× CE" not in card
    assert "hfkd distill --student run --loss ce" in card and "run_image_classification.py" in card
    # Every Python snippet of the card runs against the saved folder (named by its folder name, from its parent).
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "image.png"
    PILImage.new("RGB", (40, 40), (120, 40, 40)).save(image)
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2  # transformers and timm (a timm student has no transformers Backbone class)
    for snippet in snippets:
        namespace: dict = {}
        exec(snippet.replace("path/to/image.jpg", str(image)), namespace)  # noqa: S102
        assert namespace["embedding"].shape == (1, 96)  # test_resnet's pooled features


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--loss", "kd", "--task", "image-feature-extraction"], "Loss 'kd' serves .*Pick a loss.*embed, dense"),
        (["--loss", "embed", "--task", "image-classification"], "Loss 'embed' serves image-feature-extraction"),
        (["--loss", "ce", "--task", "image-feature-extraction"], "no task loss: --loss ce"),
        (["--loss", "embed", "--feature_loss", "mimic"], "image-feature-extraction adds embed or dense"),
        (["--loss", "embed", "--teacher_cache_dir", "cache"], "teacher cache"),
        (["--loss", "embed", "--max_train_samples", "0"], "max_train_samples must be >= 1"),
    ],
)
def test_what_cannot_work_is_refused_before_weights_load(setup, tmp_path, extra, message, monkeypatch):
    import hfkd.commands.features as features

    monkeypatch.setattr(features, "load_backbone", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(UsageError, match=message):
        main(_argv(setup, tmp_path / "run", *extra))
