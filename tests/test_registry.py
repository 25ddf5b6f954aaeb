import ast
import math
from pathlib import Path

import pytest
import torch

import hfkd.losses
from hfkd.losses import DistillationLoss, DistillBatch, LossContext, create_loss, get_loss_class, list_losses
from hfkd.losses import registry as registry_module
from hfkd.losses.registry import register_loss, resolve_loss_kwargs

LOSS_DIR = Path(hfkd.losses.__file__).parent


def test_keys_are_sorted_and_include_the_first_class_losses():
    keys = list_losses()
    assert keys == sorted(keys)
    assert {"kd", "dkd", "dist"} <= set(keys)


def test_every_loss_file_registers_exactly_its_stem():
    stems = sorted(
        p.stem for p in LOSS_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem not in {"base", "registry"}
    )
    assert stems == list_losses()
    for stem in stems:
        tree = ast.parse((LOSS_DIR / f"{stem}.py").read_text())
        keys = [
            d.args[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for d in node.decorator_list
            if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register_loss"
        ]
        assert keys == [stem]


def test_unknown_key_suggests_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'dkd'"):
        get_loss_class("dkdd")
    with pytest.raises(KeyError, match="Registered losses"):
        create_loss("no-such-loss")


def test_duplicate_key_raises_and_leaves_the_original():
    original = get_loss_class("kd")
    with pytest.raises(ValueError, match="already registered"):

        @register_loss("kd")
        class Other(DistillationLoss):
            pass

    assert get_loss_class("kd") is original


def test_user_losses_register_and_build(monkeypatch):
    monkeypatch.setattr(registry_module, "_LOSSES", dict(registry_module._LOSSES))

    @register_loss("my_l2")
    class MyL2(DistillationLoss):
        def __init__(self, *, scale: float = 1.0) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, student, teacher, batch):
            return {"loss": self.scale * (student - teacher).pow(2).mean()}

    assert "my_l2" in list_losses()
    assert create_loss("my_l2", scale=2.0).hparams() == {"scale": 2.0}


def test_misspelled_kwarg_names_the_loss_and_the_key():
    with pytest.raises(TypeError, match=r"'dkd'.*'temprature'.*alpha, beta, temperature, warmup_epochs"):
        resolve_loss_kwargs("dkd", {"temprature": 2.0})


@pytest.mark.parametrize("key", list_losses())
def test_every_loss_builds_runs_and_backpropagates(key):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=g, requires_grad=True)
    teacher = torch.randn(8, 10, generator=g)
    labels = torch.randint(0, 10, (8,), generator=g)
    loss = create_loss(key, context=LossContext(num_classes=10, dataset_size=100))
    out = loss(student, teacher, DistillBatch(labels=labels, epoch=100.0))
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    assert all(v.ndim == 0 for v in out.values())
    out["loss"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert get_loss_class(key).paper is not None
