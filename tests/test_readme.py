"""The README's Python examples run as written: the complete run under "From Python", and "Your own loss"."""

import json
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_from_python_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_block("## From Python"), "README.md", "exec"), namespace)
    metrics = namespace["trainer"].evaluate()
    # The student learned the digits from the teacher and the labels (chance is 0.10).
    assert metrics["eval_accuracy"] > 0.5
    assert "eval_accuracy" in capsys.readouterr().out
    saved = tmp_path / "out" / "student"
    assert (saved / "model.safetensors").is_file()
    assert json.loads((saved / "distill_config.json").read_text())["distill_loss"] == "dist"


def test_your_own_loss_registers_and_matches_its_function(monkeypatch):
    from hfkd import DistillationArguments, create_loss
    from hfkd.losses import DistillBatch
    from hfkd.losses import registry as registry_module

    monkeypatch.setattr(registry_module, "_LOSSES", dict(registry_module._LOSSES))
    namespace: dict = {}
    exec(compile(python_block("### Your own loss"), "README.md", "exec"), namespace)
    DistillationArguments(output_dir="unused", distill_loss="l2_logits", distill_loss_kwargs={"scale": 2.0})
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    out = create_loss("l2_logits", scale=2.0)(student, teacher, DistillBatch())
    torch.testing.assert_close(out["loss"], 2.0 * (student - teacher).pow(2).mean())
    with pytest.raises(ValueError, match="scale"):
        DistillationArguments(output_dir="unused", distill_loss="l2_logits", distill_loss_kwargs={"scal": 2.0})
