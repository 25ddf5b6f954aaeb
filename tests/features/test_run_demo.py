"""examples/run_labelfree_demo.py (what `make labelfree-demo` runs), shrunk to seconds: scikit-learn's digits, a few
steps."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from huggingface_hub import ModelCard
from transformers import AutoModel

from hfkd.tasks.features.knn import knn_top1

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import run_labelfree_demo  # noqa: E402


def test_demo_writes_table_chart_and_backbones_without_labels(tmp_path, capsys, one_thread):
    out = tmp_path / "demo"
    argv = ["--output_dir", str(out), "--dataset", "digits", "--train_images", "64", "--eval_images", "60",
            "--teacher_epochs", "0.1", "--student_epochs", "1"]  # fmt: skip
    records = run_labelfree_demo.main(argv)
    methods = list(run_labelfree_demo.METHODS)
    assert list(records) == ["pixels", "random", *methods, "teacher"]
    results = json.loads((out / "labelfree_demo_results.json").read_text())
    assert results["k-NN top-1"] == records
    # The students never saw a label: their training split has no label column; k-NN scores the labelled test split.
    students_data = load_from_disk(str(out / "data" / "unlabelled"))
    assert "label" not in students_data["train"].column_names and len(students_data["train"]) == 64
    assert "label" in students_data["test"].column_names and len(students_data["test"]) == 60
    # Each row is what its run wrote: the random-init row is the first evaluation (before any step) of the same init.
    for method in methods:
        folder = out / "students" / method.replace("+", "-")
        written = json.loads((folder / "all_results.json").read_text())
        assert records[method] == written["eval_knn_top1"] and records["teacher"] == written["teacher_eval_knn_top1"]
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        assert history[0]["step"] == 0 and history[0]["eval_knn_top1"] == records["random"]
        assert ModelCard.load(folder / "README.md").data.pipeline_tag == "image-feature-extraction"
        assert not (folder / "distill_adapters.safetensors").exists()  # no projection in the backbone's folder
        assert type(AutoModel.from_pretrained(folder)).__name__ == "ResNetModel"
    # The teacher is the trained classifier without its head.
    teacher = AutoModel.from_pretrained(out / "teacher-backbone")
    assert type(teacher).__name__ == "ResNetModel" and not hasattr(teacher, "classifier")
    # The raw-pixel row is the same k-NN on the normalised pixels, recomputed here.
    test = students_data["test"]
    pixels = np.stack([np.asarray(image, dtype=np.float32).reshape(-1) for image in test["image"]]) / 255.0
    mean, std = run_labelfree_demo.MEAN[0], run_labelfree_demo.STD[0]
    assert records["pixels"] == pytest.approx(knn_top1((pixels - mean) / std, np.asarray(test["label"])))
    table = (out / "labelfree_demo_results.md").read_text()
    for label in ("| raw pixels (no model) |", "| student, random init (no training) |", "| student, embed+dense |"):
        assert label in table
    assert (out / "labelfree_demo_results.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert table.strip() in printed and "min in all" in printed
    # A second run reuses the teacher and the data.
    run_labelfree_demo.main([*argv, "--methods", "embed"])
    assert "Reusing the teacher" in capsys.readouterr().out
