import ast
import math
from pathlib import Path

import pytest
import torch

import hfkd.losses
from hfkd.losses import DistillationLoss, DistillBatch, LossContext, create_loss, get_loss_class, list_losses
from hfkd.losses import registry as registry_module
from hfkd.losses.base import (
    IMAGE_CLASSIFICATION,
    IMAGE_FEATURE_EXTRACTION,
    KNOWN_TASKS,
    OBJECT_DETECTION,
    SEMANTIC_SEGMENTATION,
)
from hfkd.losses.registry import register_loss, resolve_loss_kwargs
from hfkd.utils.errors import UsageError

from .testing_utils import tiny_deit_with_teacher

LOSS_DIR = Path(hfkd.losses.__file__).parent
# The losses that read a classifier's outputs, and those that serve dense tasks only (and refuse a classifier's).
CLASSIFICATION_LOSSES = [key for key in list_losses() if IMAGE_CLASSIFICATION in get_loss_class(key).tasks]
LABEL_FREE_LOSSES = [key for key in list_losses() if get_loss_class(key).tasks == {IMAGE_FEATURE_EXTRACTION}]
DENSE_ONLY_LOSSES = [
    key
    for key in list_losses()
    if IMAGE_CLASSIFICATION not in get_loss_class(key).tasks and key not in LABEL_FREE_LOSSES
]


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


def test_every_loss_declares_the_tasks_it_serves():
    for key in list_losses():
        tasks = get_loss_class(key).tasks
        assert isinstance(tasks, frozenset) and tasks and tasks <= KNOWN_TASKS, key
    every_task = {IMAGE_CLASSIFICATION, SEMANTIC_SEGMENTATION, OBJECT_DETECTION}
    assert get_loss_class("kd").tasks == get_loss_class("dist").tasks == every_task
    assert get_loss_class("dkd").tasks == {IMAGE_CLASSIFICATION, OBJECT_DETECTION}  # on a Faster R-CNN's RoIs
    assert get_loss_class("cwd").tasks == {SEMANTIC_SEGMENTATION, OBJECT_DETECTION}
    assert get_loss_class("mimic").tasks == get_loss_class("pkd").tasks == {OBJECT_DETECTION}
    assert {"cwd", "mimic", "pkd"} <= set(DENSE_ONLY_LOSSES)
    assert LABEL_FREE_LOSSES == ["dense", "embed"]


def test_a_loss_with_unknown_tasks_is_not_registered(monkeypatch):
    monkeypatch.setattr(registry_module, "_LOSSES", dict(registry_module._LOSSES))
    with pytest.raises(TypeError, match="tasks must be a non-empty frozenset"):

        @register_loss("depth_kd")
        class DepthKD(DistillationLoss):
            tasks = frozenset({"depth-estimation"})

    assert "depth_kd" not in list_losses()


def test_misspelled_kwarg_names_the_loss_and_the_key():
    with pytest.raises(TypeError, match=r"'dkd'.*'temprature'.*alpha, beta, temperature, warmup_epochs"):
        resolve_loss_kwargs("dkd", {"temprature": 2.0})


@pytest.fixture(scope="module")
def model_outputs():
    """Real outputs of a tiny student/teacher pair (stem + 2 stages), and the context the trainer would build."""
    from hfkd.models.features import classifier_head, probe_feature_shapes

    from .testing_utils import tiny_resnet

    student, teacher = tiny_resnet(10, seed=1), tiny_resnet(10, wide=True, seed=2)
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    context = LossContext(
        num_classes=10,
        dataset_size=20000,
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
        student_head=classifier_head(student),
        teacher_head=classifier_head(teacher),
    )
    with torch.no_grad():
        teacher_out = teacher(pixel_values=pixels, output_hidden_states=True)
    return student, pixels, teacher_out, context


@pytest.mark.parametrize("key", CLASSIFICATION_LOSSES)
def test_every_loss_builds_runs_and_backpropagates(key, model_outputs):
    student, pixels, teacher_out, context = model_outputs
    cls = get_loss_class(key)
    try:
        loss = create_loss(key, context=context)
    except ValueError as err:  # losses that need inputs these models cannot give must say so clearly
        pytest.skip(f"{key}: {err}")
    student.zero_grad()
    student_out = student(pixel_values=pixels, output_hidden_states=cls.needs.hidden_states)
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    batch = DistillBatch(labels=labels, epoch=100.0, sample_index=torch.arange(8))
    if cls.needs.distillation_head:  # DeiT: refuses the ResNet's output, trains a student with a distillation head
        with pytest.raises(UsageError, match="distillation head"):
            loss(student_out, teacher_out, batch)
        student = tiny_deit_with_teacher(10, image_size=32)
        student_out = student(pixel_values=pixels)
        batch.cross_entropy = lambda logits: torch.nn.functional.cross_entropy(logits, labels)
    if cls.needs.strong_view:
        batch.student_strong = student(pixel_values=pixels.flip(-1), output_hidden_states=cls.needs.hidden_states)
        batch.teacher_strong = teacher_out
    try:
        out = loss.train()(student_out, teacher_out, batch)
    except ValueError as err:
        if "pre-activation" in str(err):
            pytest.skip(f"{key}: {err}")
        raise
    assert out["loss"].ndim == 0 and math.isfinite(out["loss"].item())
    assert all(v.ndim == 0 for v in out.values())
    (out["loss"] + out.get("ce", 0.0)).backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert cls.paper is not None and cls.paper.title


@pytest.mark.parametrize("key", DENSE_ONLY_LOSSES)
def test_dense_only_losses_refuse_a_classifier_with_a_clear_error(key, model_outputs):
    student, pixels, teacher_out, context = model_outputs
    loss = create_loss(key, context=context)
    student_out = student(pixel_values=pixels, output_hidden_states=True)
    assert student_out.logits.ndim == 2
    # CWD names the (B, C, H, W) maps it needs; the detection feature losses name the outputs' neck features.
    expected = {"cwd": r"CWD needs dense \(B, C, H, W\) maps.*got student \(8, 10\)"}.get(key, "neck_features")
    with pytest.raises(UsageError, match=expected):
        loss(student_out, teacher_out, DistillBatch())


@pytest.mark.parametrize("key", LABEL_FREE_LOSSES)
def test_label_free_losses_say_what_they_need(key, model_outputs):
    """Without the backbones' probed sizes the loss says how to get them; on a classifier's output it names the
    task that gives it backbone features."""
    student, pixels, teacher_out, context = model_outputs
    with pytest.raises(UsageError, match="probe_image_context"):
        create_loss(key, context=context)
    sized = LossContext(student_embedding_dim=16, teacher_embedding_dim=32, student_feature_shapes=[(16, 4, 4)],
                        teacher_feature_shapes=[(32, 4, 4)])  # fmt: skip
    with pytest.raises(UsageError, match="image-feature-extraction"):
        create_loss(key, context=sized)(student(pixel_values=pixels), teacher_out, DistillBatch())
