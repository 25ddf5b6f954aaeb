"""examples/run_demo.py (what `make demo` runs), shrunk to seconds on scikit-learn's digits."""

import json
import sys
from pathlib import Path

from huggingface_hub import ModelCard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_demo  # noqa: E402


def test_demo_writes_results_plot_and_cards(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--output_dir", str(out), "--dataset", "digits", "--seeds", "0", "1", "--train_images", "300",
            "--labelled", "60", "--teacher_epochs", "0.3", "--student_epochs", "1"]  # fmt: skip
    records = run_demo.main(argv)
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved == records
    methods = {(r["method"], r["seed"]) for r in saved}
    assert methods == {(m, s) for m in ("ce", "kd", "dkd", "dist") for s in (0, 1)} | {("teacher", 0)}
    assert all(0.0 <= r["eval_accuracy"] <= 1.0 for r in saved)
    assert (out / "demo_results.png").stat().st_size > 0
    table = (out / "demo_results.md").read_text()
    assert "student, KD" in table and "teacher" in table
    printed = capsys.readouterr().out
    assert "Data: scikit-learn digits" in printed and table.strip() in printed
    for method in ("kd", "dkd", "dist"):
        card = ModelCard.load(out / "students" / f"{method}-seed1" / "README.md")
        assert f"distill-{method}" in card.data.tags
        assert "CE-only baseline" in card.text  # the CE run of the same seed is the card's baseline
        assert card.data.datasets is None  # digits are not a Hub dataset
    # A second run reuses the cached teacher.
    run_demo.main(argv)
    assert "Reusing the teacher" in capsys.readouterr().out
