"""Pre-activation stage maps and BN-before-ReLU statistics (hfkd.features), and OFD through the trainer."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, TimmWrapperConfig, TimmWrapperForImageClassification

from hfkd import DistillationTrainer
from hfkd.models.features import PreactivationRecorder, bn_before_relu_stats, supports_preactivations

from .test_trainer import _args, _perturb, _state
from .testing_utils import collate, synthetic_dataset, tiny_resnet, tiny_vit


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Distinct BN affine parameters and running statistics, so that every module is told apart by its values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(torch.randn(module.bias.shape, generator=g))
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model


def _cifar(architecture: str, seed: int = 0, num_labels: int = 5) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture=architecture, num_labels=num_labels))


def _pixels(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_resnet_preacts_are_the_maps_before_each_last_relu():
    model = _randomize_bn(tiny_resnet()).eval()
    pixels = _pixels()
    with PreactivationRecorder(model) as recorder, torch.no_grad():
        out = recorder.run(model, pixel_values=pixels, output_hidden_states=True)
    preacts, hidden = out.preact_hidden_states, out.hidden_states
    assert len(preacts) == len(hidden) == 3
    for preact, state in zip(preacts, hidden):
        assert preact.shape == state.shape
        torch.testing.assert_close(F.relu(preact), state, rtol=0, atol=0)
        assert (preact < 0).any()
    with torch.no_grad():
        # Stem: conv-BN of the embedder, max-pooled like hidden_states[0].
        embedder = model.resnet.embedder
        stem = embedder.pooler(embedder.embedder.normalization(embedder.embedder.convolution(pixels)))
        torch.testing.assert_close(preacts[0], stem)
        # Last stage: its last layer's residual branch plus shortcut, on the previous stage's output.
        layer = model.resnet.encoder.stages[1].layers[-1]
        torch.testing.assert_close(preacts[2], layer.layer(hidden[1]) + layer.shortcut(hidden[1]))
    # An attribute only: tuples (and eval predictions) stay as they were.
    assert "preact_hidden_states" not in out.keys()


def test_recorder_records_only_inside_run_and_keeps_the_graph():
    model = tiny_resnet().train()
    recorder = PreactivationRecorder(model)
    plain = model(pixel_values=_pixels(), output_hidden_states=True)
    assert getattr(plain, "preact_hidden_states", None) is None and recorder._maps == {}
    out = recorder.run(model, pixel_values=_pixels(), output_hidden_states=True)
    assert recorder._maps == {}  # nothing outlives the step
    out.preact_hidden_states[-1].sum().backward()
    assert model.resnet.encoder.stages[-1].layers[-1].layer[-1].convolution.weight.grad is not None
    recorder.close()
    hooks = [m._forward_pre_hooks for m in model.modules()]
    assert all(len(h) == 0 for h in hooks)
    assert getattr(recorder.run(model, pixel_values=_pixels()), "preact_hidden_states", None) is None


def test_resnet_bn_stats_come_from_the_bn_before_each_relu():
    model = _randomize_bn(tiny_resnet())
    stats = bn_before_relu_stats(model)
    norms = [model.resnet.embedder.embedder.normalization]
    norms += [stage.layers[-1].layer[-1].normalization for stage in model.resnet.encoder.stages]
    assert len(stats) == len(norms) == 3
    for (mean, std), bn in zip(stats, norms):
        torch.testing.assert_close(mean, bn.bias.detach())
        torch.testing.assert_close(std, bn.weight.detach().abs())
        assert not mean.requires_grad and not std.requires_grad
    # Copies: training the teacher's BN later would not move the margins.
    assert stats[1][0].data_ptr() != norms[1].bias.data_ptr()


def test_cifar_resnet_through_timm_wrapper_matches_forward_preact_features():
    model = _randomize_bn(_cifar("cifar_resnet8x4")).eval()
    pixels = _pixels()
    recorder = PreactivationRecorder(model)
    with torch.no_grad():
        expected = model.timm_model.forward_preact_features(pixels)
        with_hidden = recorder.run(model, pixel_values=pixels, output_hidden_states=True)
        logits_only = recorder.run(model, pixel_values=pixels)
    for out in (with_hidden, logits_only):
        assert len(out.preact_hidden_states) == len(expected["preact_feats"]) == 4
        for got, ref in zip(out.preact_hidden_states, expected["preact_feats"]):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for preact, state in zip(with_hidden.preact_hidden_states[1:], with_hidden.hidden_states[1:]):
        torch.testing.assert_close(F.relu(preact), state, rtol=0, atol=0)


def test_cifar_bn_stats_are_mdistillers_bn_before_relu():
    model = _randomize_bn(_cifar("cifar_resnet8x4"))
    timm_model = model.timm_model
    norms = timm_model.get_bn_before_relu()
    assert norms == [timm_model.layer1[-1].bn2, timm_model.layer2[-1].bn2, timm_model.layer3[-1].bn2]
    stats = bn_before_relu_stats(model)
    assert len(stats) == 4
    # The stem entry is mdistiller's post-ReLU stem output: a neutral pair keeps the list aligned.
    torch.testing.assert_close(stats[0][0], torch.zeros(32))
    torch.testing.assert_close(stats[0][1], torch.ones(32))
    for (mean, std), bn in zip(stats[1:], norms):
        torch.testing.assert_close(mean, bn.bias.detach())
        torch.testing.assert_close(std, bn.weight.detach().abs())
    resnet18 = _cifar("cifar_resnet18").timm_model
    assert resnet18.get_bn_before_relu() == [
        stage[-1].bn2 for stage in (resnet18.layer1, resnet18.layer2, resnet18.layer3, resnet18.layer4)
    ]


@pytest.mark.parametrize("architecture", ["cifar_wrn_16_2", "cifar_vgg8"])
def test_cifar_wrn_and_vgg_preacts_and_bn_stats_follow_mdistiller(architecture):
    model = _randomize_bn(_cifar(architecture)).eval()
    timm_model = model.timm_model
    assert supports_preactivations(model)
    pixels = _pixels()
    recorder = PreactivationRecorder(model)
    with torch.no_grad():
        expected = timm_model.forward_preact_features(pixels)
        with_hidden = recorder.run(model, pixel_values=pixels, output_hidden_states=True)
        logits_only = recorder.run(model, pixel_values=pixels)
    for out in (with_hidden, logits_only):
        assert len(out.preact_hidden_states) == len(expected["preact_feats"]) == len(timm_model.feature_info)
        for got, ref in zip(out.preact_hidden_states, expected["preact_feats"]):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    recorder.close()
    # The modules of mdistiller's get_bn_before_relu() (models/cifar/wrn.py, vgg.py).
    if architecture.startswith("cifar_wrn"):
        wanted = [timm_model.block2.layer[0].bn1, timm_model.block3.layer[0].bn1, timm_model.bn1]
    else:
        wanted = [timm_model.block1[-1], timm_model.block2[-1], timm_model.block3[-1], timm_model.block4[-1]]
    norms = timm_model.get_bn_before_relu()
    assert all(isinstance(bn, torch.nn.BatchNorm2d) for bn in norms)
    assert len(norms) == len(wanted) and all(a is b for a, b in zip(norms, wanted))
    stats = bn_before_relu_stats(model)
    assert len(stats) == len(expected["preact_feats"])
    torch.testing.assert_close(stats[0][0], torch.zeros(timm_model.feature_info[0]["num_chs"]))
    torch.testing.assert_close(stats[0][1], torch.ones(timm_model.feature_info[0]["num_chs"]))
    for (mean, std), bn, preact in zip(stats[1:], norms, expected["preact_feats"][1:]):
        assert mean.shape[0] == preact.shape[1]
        torch.testing.assert_close(mean, bn.bias.detach())
        torch.testing.assert_close(std, bn.weight.detach().abs())


def test_cifar_vgg_without_bn_has_no_bn_before_relu():
    from hfkd.models.cifar.vgg import CifarVGG

    with pytest.raises(NotImplementedError, match="batch_norm=False"):
        CifarVGG("S", batch_norm=False, num_classes=5).get_bn_before_relu()


def test_unsupported_models_are_refused_with_the_alternatives():
    class Wrapped(torch.nn.Module):  # DDP-style `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert supports_preactivations(tiny_resnet()) and supports_preactivations(Wrapped(tiny_resnet()))
    refused = ((tiny_vit(), "ViTForImageClassification"), (_cifar("cifar_mobilenetv2"), "cifar_mobilenetv2"))
    for model, named in refused:
        assert not supports_preactivations(model)
        for build in (bn_before_relu_stats, PreactivationRecorder):
            with pytest.raises(ValueError, match=rf"teacher's pre-activation.*{named}.*'at', 'fitnet' or 'reviewkd'"):
                build(model, "teacher")


@pytest.mark.parametrize(
    "pair",
    [
        pytest.param(lambda: (tiny_resnet(seed=1), tiny_resnet(wide=True, seed=2)), id="resnet"),
        pytest.param(lambda: (_cifar("cifar_resnet8", 1), _cifar("cifar_resnet8x4", 2)), id="cifar"),
        pytest.param(lambda: (_cifar("cifar_wrn_16_1", 1), _cifar("cifar_wrn_16_2", 2)), id="cifar_wrn"),
        pytest.param(lambda: (_cifar("cifar_vgg8", 1), _cifar("cifar_vgg8", 2)), id="cifar_vgg"),
    ],
)
def test_ofd_trains_the_connectors_through_the_trainer(tmp_path, pair):
    student, teacher = pair()
    _perturb(teacher)
    teacher_before = _state(teacher)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_args(tmp_path, distill_loss="ofd", distill_loss_kwargs={"feat_weight": 1.0}),
        train_dataset=synthetic_dataset(16, seed=0),
        eval_dataset=synthetic_dataset(8, seed=1),
        data_collator=collate,
    )
    wrapper = trainer.model
    connectors_before = _state(wrapper.distill_loss.connectors)
    student_before = _state(student)
    trainer.train()
    losses = [entry["distill/ofd"] for entry in trainer.state.log_history if "distill/ofd" in entry]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    after = wrapper.distill_loss.connectors.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in connectors_before.items() if k.endswith("weight"))
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    # Nothing recorded is kept between steps.
    assert wrapper.preact_recorder._maps == {} and trainer.teacher.recorder._maps == {}
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "final")
    assert set(reloaded.state_dict()) == set(student.state_dict())
