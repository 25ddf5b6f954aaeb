"""ZeRO-3 gives the teacher its own DeepSpeed inference engine; ZeRO-1/2 keep it whole. DeepSpeed itself is faked:
the test checks the configuration hfkd hands it."""

import sys
import types

import torch

from hfkd.teachers.deepspeed import deepspeed_zero_stage, prepare_deepspeed_teacher

from .testing_utils import tiny_resnet


def _accelerator(config):
    plugin = types.SimpleNamespace(deepspeed_config=config)
    return types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin))


def test_zero3_teacher_gets_an_inference_engine(monkeypatch):
    calls = []

    class FakeEngine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    def initialize(model, config):
        calls.append(config)
        return FakeEngine(model), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    config = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10},
        "optimizer": {"type": "AdamW"},
        "scheduler": {"type": "WarmupLR"},
        "bf16": {"enabled": True},
        "train_micro_batch_size_per_gpu": 8,
    }
    accelerator = _accelerator(config)
    assert deepspeed_zero_stage(accelerator) == 3
    teacher = tiny_resnet(wide=True).train()
    engine = prepare_deepspeed_teacher(teacher, accelerator)
    (sent,) = calls
    assert "optimizer" not in sent and "scheduler" not in sent  # an inference engine, not a training one
    assert sent["zero_optimization"]["stage"] == 3 and sent["bf16"] == {"enabled": True}
    assert config["optimizer"] == {"type": "AdamW"}  # the student's configuration is left untouched
    assert not engine.training and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    out = engine(pixel_values=torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5)


def test_zero_stage_without_deepspeed_and_with_zero2():
    assert deepspeed_zero_stage(types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=None))) is None
    assert deepspeed_zero_stage(_accelerator({"zero_optimization": {"stage": 2}})) == 2
