"""examples/run_detection_demo.py (what `make detection-demo` runs), shrunk to seconds: a few scenes, a few steps."""

import json
import sys
from pathlib import Path

from datasets import load_from_disk
from huggingface_hub import ModelCard

from hfkd.tasks.detection.demo import load_demo_detection_scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import run_detection_demo  # noqa: E402


def test_demo_writes_table_chart_picture_and_cards(tmp_path, capsys, one_thread):
    out = tmp_path / "demo"
    argv = ["--output_dir", str(out), "--train_scenes", "16", "--eval_scenes", "4", "--teacher_steps", "2",
            "--student_steps", "1"]  # fmt: skip
    records = run_detection_demo.main(argv)
    assert json.loads((out / "detection_demo_results.json").read_text()) == records
    assert list(records) == ["teacher", "ce", *run_detection_demo.DEFAULT_METHODS]
    assert all(0.0 <= r["eval_map"] <= 1.0 and 0.0 <= r["eval_map_50"] <= 1.0 for r in records.values())
    table = (out / "detection_demo_results.md").read_text()
    for row in ("| teacher (longer training) |", "| student, CE (its own loss alone) |", "| student, CWD |"):
        assert row in table
    for picture in ("detection_demo_results.png", "detection_demo_predictions.png"):
        assert (out / picture).stat().st_size > 0
    printed = capsys.readouterr().out
    assert table.strip() in printed and "3 groups" in printed and "min in all" in printed
    # The scenes are the embedded ones, each item's class replaced by its group's.
    groups = list(run_detection_demo.GROUPS)
    assert json.loads((out / "scenes" / "id2label.json").read_text()) == {str(i): n for i, n in enumerate(groups)}
    scenes = load_from_disk(str(out / "scenes"))["train"]
    assert scenes.features["objects"]["category"].feature.names == groups
    items = load_demo_detection_scenes(16, 4, seed=0, canvas=run_detection_demo.CANVAS)[0]["train"]
    for grouped, row in zip(scenes["objects"], items["objects"]):
        assert grouped["bbox"] == row["bbox"]
        assert all(c in run_detection_demo.GROUPS[groups[g]] for g, c in zip(grouped["category"], row["category"]))
    for method in run_detection_demo.DEFAULT_METHODS:
        card = ModelCard.load(out / "students" / method / "README.md")
        assert f"distill-{method}" in card.data.tags and card.data.pipeline_tag == "object-detection"
        assert "CE-only baseline" in card.text  # the CE student of the same seed is the card's baseline
    # A second run reuses the teacher; --methods picks the distilled students.
    again = run_detection_demo.main([*argv, "--methods", "pkd"])
    assert "Reusing the teacher" in capsys.readouterr().out
    assert list(again) == ["teacher", "ce", "pkd"] and again["teacher"] == records["teacher"]
