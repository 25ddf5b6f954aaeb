"""Every registered loss module computes its value with its file's pure function, and nothing else.

`CASES` maps each registry key to non-default hyperparameters and to the same loss written with the pure function:
the stage selection, the `feat_weight` and the warm-up factor spelled out here, the hyperparameters passed by hand
(so one dropped between module and function shows), and trainable adapters (regressors, connectors, ABFs,
embeddings and memory, CTKD's temperature) taken from a copy of the module made before its forward. The module's
`"loss"`, and every component its function returns, must equal the function's bit for bit. A registered loss
without an entry fails: adding a loss means adding its case here. A loss that serves no classification task (CWD,
the detection feature losses) runs on `dense_setup`, outputs shaped as the segmentation and detection tasks give them;
`DENSE_CASES` also runs the losses that serve every task (KD, DIST) on those.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import (
    DistillBatch,
    LossContext,
    at_loss,
    clkd_loss,
    crd_loss,
    create_loss,
    cwd_loss,
    deit_distillation_loss,
    deit_loss,
    dense_loss,
    dist_loss,
    dkd_loss,
    embed_loss,
    fitnet_loss,
    get_loss_class,
    hcl_loss,
    kd_loss,
    kdsvd_loss,
    list_losses,
    mimic_loss,
    mlkd_loss,
    nst_loss,
    ofd_loss,
    ofd_margin,
    pkd_loss,
    pkt_loss,
    rkd_loss,
    skd_total_loss,
    sp_loss,
    vid_loss,
)
from hfkd.losses._feature_functional import pool_to_common_size
from hfkd.losses._image_features import ImageFeatures
from hfkd.losses.base import IMAGE_CLASSIFICATION, IMAGE_FEATURE_EXTRACTION
from hfkd.losses.sdd import region_logits, sdd_dkd_loss
from hfkd.models.features import classifier_head, probe_feature_shapes

from .testing_utils import tiny_resnet

NUM_CLASSES, DATASET_SIZE, EPOCH = 10, 40, 1.5
# (β, γ) of a BN before each teacher map's ReLU, stem first: OFD's margins.
_g = torch.Generator().manual_seed(3)
BN_STATS = [(torch.randn(c, generator=_g), torch.rand(c, generator=_g) + 0.2) for c in (8, 16, 32)]


@dataclass
class Setup:
    student: dict
    teacher: dict
    batch: DistillBatch
    context: LossContext


@pytest.fixture(scope="module")
def setup() -> Setup:
    """A tiny ResNet pair (stem + 2 stages) on 8 images, with every input any loss asks for."""
    student, teacher = tiny_resnet(NUM_CLASSES, seed=1), tiny_resnet(NUM_CLASSES, wide=True, seed=2)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (8,), generator=g)

    def run(model, images):
        out = model(pixel_values=images, output_hidden_states=True)
        # Stand-ins for pre-activation maps (OFD, ReviewKD's `student_preact`): shifted so that some are negative.
        preacts = tuple(h - 0.5 * h.mean() for h in out.hidden_states)
        # Stand-ins for a distillation head's two outputs (DeiT): the logits, and those of the batch reversed.
        heads = {"cls_logits": out.logits, "distillation_logits": out.logits.flip(0)}
        return {"logits": out.logits, "hidden_states": out.hidden_states, "preact_hidden_states": preacts, **heads}

    student_out, student_strong = run(student, pixels), run(student, pixels.flip(-1))
    with torch.no_grad():
        teacher_out, teacher_strong = run(teacher, pixels), run(teacher, pixels.flip(-1))
    batch = DistillBatch(
        labels=labels,
        epoch=EPOCH,
        sample_index=torch.tensor([3, 7, 11, 0, 39, 20, 5, 12]),
        student_strong=student_strong,
        teacher_strong=teacher_strong,
        cross_entropy=lambda logits: F.cross_entropy(logits, labels),
    )
    context = LossContext(
        num_classes=NUM_CLASSES,
        dataset_size=DATASET_SIZE,
        student_feature_shapes=probe_feature_shapes(student, pixels),
        teacher_feature_shapes=probe_feature_shapes(teacher, pixels),
        student_head=classifier_head(student),
        teacher_head=classifier_head(teacher),
        teacher_bn_stats=BN_STATS,
    )
    return Setup(student_out, teacher_out, batch, context)


@pytest.fixture(scope="module")
def dense_setup() -> Setup:
    """Dense outputs on 2 images: (B, C, 8, 8) logits and an auxiliary head's, three neck levels, and a pixel mask."""
    g = torch.Generator().manual_seed(5)

    def output(scale):
        logits, auxiliary = (torch.randn(2, NUM_CLASSES, 8, 8, generator=g) * scale for _ in range(2))
        neck = tuple(torch.randn(2, 8, 16 // 2**i, 16 // 2**i, generator=g) * scale for i in range(3))
        return {"logits": logits, "auxiliary_logits": auxiliary, "neck_features": neck}

    student, teacher = output(1.0), output(3.0)
    for value in (student["logits"], student["auxiliary_logits"], *student["neck_features"]):
        value.requires_grad_()
    batch = DistillBatch(epoch=EPOCH, pixel_mask=torch.rand(2, 8, 8, generator=g) < 0.7)
    return Setup(student, teacher, batch, LossContext(num_classes=NUM_CLASSES))


@pytest.fixture(scope="module")
def feature_setup() -> Setup:
    """Backbone features on 3 images, as the image-feature-extraction task gives them: a student's 16-d embedding and
    (16, 5, 5) map, a teacher's 24-d embedding and (24, 4, 4) patch grid."""
    g = torch.Generator().manual_seed(9)
    student = ImageFeatures(torch.randn(3, 16, generator=g), torch.randn(3, 16, 5, 5, generator=g))
    teacher = ImageFeatures(torch.randn(3, 24, generator=g), torch.randn(3, 24, 4, 4, generator=g))
    context = LossContext(student_embedding_dim=16, teacher_embedding_dim=24, student_feature_shapes=[(16, 5, 5)],
                          teacher_feature_shapes=[(24, 4, 4)])  # fmt: skip
    return Setup(student, teacher, DistillBatch(epoch=EPOCH), context)


Result = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
CASES: dict[str, tuple[dict, Callable[[object, Setup], Result]]] = {}
DENSE_CASES: dict[str, tuple[dict, Callable[[object, Setup], Result]]] = {}


def case(key: str, *, dense: bool = False, **kwargs):
    """Register the functional form of loss `key`, built with `kwargs`: a function of (module copy, setup). With
    `dense`, an extra case on `dense_setup` for a loss whose main case runs on the classifiers."""

    def register(function):
        (DENSE_CASES if dense else CASES)[key] = (kwargs, function)
        return function

    return register


def maps(output: dict, *stages: int, key: str = "hidden_states") -> list[torch.Tensor]:
    return [output[key][i] for i in stages]


def pooled(output: dict) -> torch.Tensor:
    return output["hidden_states"][-1].mean(dim=(2, 3))


@case("at", p=3.0, stages=[0, 2], feat_weight=7.0)
def _at(loss, x):
    return 7.0 * at_loss(maps(x.student, 0, 2), maps(x.teacher, 0, 2), p=3.0)


@case("clkd", instance_weight=0.3, class_weight=1.7, correlation_weight=0.9)
def _clkd(loss, x):
    s, t = x.student["logits"], x.teacher["logits"]
    return clkd_loss(s, t, instance_weight=0.3, class_weight=1.7, correlation_weight=0.9, return_terms=True)


@case("crd", feat_dim=16, nce_k=8, temperature=0.1, momentum=0.3, feat_weight=0.5)
def _crd(loss, x):
    student_embed, teacher_embed = loss.embed_student(pooled(x.student)), loss.embed_teacher(pooled(x.teacher))
    rows = loss.memory.sample(x.batch.sample_index, 8)
    value, terms = crd_loss(
        student_embed,
        teacher_embed,
        loss.memory.student[rows],
        loss.memory.teacher[rows],
        normalizers=loss.memory.normalizers,
        dataset_size=DATASET_SIZE,
        temperature=0.1,
        return_terms=True,
    )
    return 0.5 * value, {"crd": value, **terms}


@case("ctkd", t_start=2.0, t_end=10.0, init_theta=-0.5, decay_epochs=5.0, lambda_max=0.5)
def _ctkd(loss, x):
    temperature = 2.0 + 10.0 * torch.sigmoid(loss.theta)
    value = kd_loss(x.student["logits"], x.teacher["logits"], temperature=temperature)
    return value, {"kd": value, "temperature": temperature}


@case("cwd", temperature=2.0, loss_weight=5.0)
def _cwd(loss, x):
    value = cwd_loss(x.student["logits"], x.teacher["logits"], temperature=2.0)
    return 5.0 * value, {"cwd": value}


@case("deit", distillation_type="soft", alpha=0.3, temperature=2.0)
def _deit(loss, x):
    hparams = {"distillation_type": "soft", "alpha": 0.3, "temperature": 2.0}
    cls_logits, distillation_logits = x.student["cls_logits"], x.student["distillation_logits"]
    value, terms = deit_loss(
        cls_logits, distillation_logits, x.teacher["logits"], x.batch.labels, **hparams, return_terms=True
    )
    distillation = deit_distillation_loss(distillation_logits, x.teacher["logits"], **hparams_without(hparams))
    torch.testing.assert_close(value, 0.7 * terms["base"] + 0.3 * distillation)
    return 0.3 * distillation, {"distillation": distillation, "ce": 0.7 * terms["base"], "base": terms["base"]}


def hparams_without(hparams: dict, key: str = "alpha") -> dict:
    return {k: v for k, v in hparams.items() if k != key}


@case("dist", beta=2.0, gamma=0.5, temperature=3.0)
def _dist(loss, x):
    return dist_loss(x.student["logits"], x.teacher["logits"], beta=2.0, gamma=0.5, temperature=3.0, return_terms=True)


@case("dist", dense=True, gamma=0.5, use_sigmoid=True, aux_weight=0.4, mask_ignored=True)
def _dist_dense(loss, x):
    hparams = {"gamma": 0.5, "use_sigmoid": True, "mask": x.batch.pixel_mask}
    value, terms = dist_loss(x.student["logits"], x.teacher["logits"], **hparams, return_terms=True)
    aux = dist_loss(x.student["auxiliary_logits"], x.teacher["auxiliary_logits"], **hparams)
    return value + 0.4 * aux, {**terms, "aux": aux}


@case("dkd", alpha=2.0, beta=5.0, temperature=3.0, warmup_epochs=4.0, logit_standardization=True)
def _dkd(loss, x):
    value, terms = dkd_loss(
        x.student["logits"],
        x.teacher["logits"],
        x.batch.labels,
        alpha=2.0,
        beta=5.0,
        temperature=3.0,
        logit_standardization=True,
        return_terms=True,
    )
    # Warm-up at epoch 1.5 of 4: (⌊1.5⌋ + 1) / 4.
    return 0.5 * value, {**terms, "warmup": torch.tensor(0.5)}


@case("embed", distance="mse", loss_weight=2.0)
def _embed(loss, x):
    value = embed_loss(loss.projection(x.student.embedding), x.teacher.embedding, distance="mse")
    return 2.0 * value, {"embed": value}


@case("dense", distance="cosine", loss_weight=0.5)
def _dense(loss, x):
    value = dense_loss(loss.projection(x.student.feature_map), x.teacher.feature_map, distance="cosine")
    return 0.5 * value, {"dense": value}


@case("fitnet", stages=[1, 2], teacher_stages=[2, 1], feat_weight=20.0)
def _fitnet(loss, x):
    regressed = [regressor(s) for regressor, s in zip(loss.regressors, maps(x.student, 1, 2))]
    return 20.0 * fitnet_loss(regressed, maps(x.teacher, 2, 1))


@case("kd", temperature=2.5, logit_standardization=True)
def _kd(loss, x):
    return kd_loss(x.student["logits"], x.teacher["logits"], temperature=2.5, logit_standardization=True)


@case("kd", dense=True, temperature=2.0)
def _kd_dense(loss, x):
    # Averaged over the pixels the batch's mask keeps.
    return kd_loss(x.student["logits"], x.teacher["logits"], temperature=2.0, mask=x.batch.pixel_mask)


@case("kdsvd", k=2, stages=[0, 2], feat_weight=2.0)
def _kdsvd(loss, x):
    return 2.0 * kdsvd_loss(maps(x.student, 0, 2), maps(x.teacher, 0, 2), k=2)


@case("mimic", loss_weight=2.0)
def _mimic(loss, x):
    value = mimic_loss(x.student["neck_features"], x.teacher["neck_features"])
    return 2.0 * value, {"mimic": value}


@case("mlkd", temperature=2.0, logit_standardization=True, reference_strong_sum=False)
def _mlkd(loss, x):
    strong = x.batch.student_strong["logits"], x.batch.teacher_strong["logits"]
    value, terms = mlkd_loss(
        x.student["logits"],
        x.teacher["logits"],
        *strong,
        temperature=2.0,
        logit_standardization=True,
        reference_strong_sum=False,
        return_terms=True,
    )
    # The method's own CE term is on the strong view.
    return value, {**terms, "ce": F.cross_entropy(strong[0], x.batch.labels)}


@case("nst", stages=[2], feat_weight=10.0)
def _nst(loss, x):
    return 10.0 * nst_loss(maps(x.student, 2), maps(x.teacher, 2))


@case("ofd", connector_kernel_size=3, stages=[2, 1], feat_weight=0.01)
def _ofd(loss, x):
    student, teacher = (maps(output, 2, 1, key="preact_hidden_states") for output in (x.student, x.teacher))
    margins = [ofd_margin(*BN_STATS[i]).float() for i in (2, 1)]
    return 0.01 * ofd_loss([connector(s) for connector, s in zip(loss.connectors, student)], teacher, margins)


@case("pkd", loss_weight=10.0)
def _pkd(loss, x):
    value = pkd_loss(x.student["neck_features"], x.teacher["neck_features"])
    return 10.0 * value, {"pkd": value}


@case("pkt", feat_weight=100.0)
def _pkt(loss, x):
    return 100.0 * pkt_loss(pooled(x.student), pooled(x.teacher))


@case("reviewkd", warmup_epochs=4.0, max_mid_channels=4, student_preact=True, stages=[1, 2], feat_weight=3.0)
def _reviewkd(loss, x):
    # The pooled last stage (post-activation) is appended to both sides; the teacher's maps are its pre-activations.
    student = [*maps(x.student, 1, 2, key="preact_hidden_states"), pooled(x.student)[:, :, None, None]]
    teacher = [*maps(x.teacher, 1, 2, key="preact_hidden_states"), pooled(x.teacher)[:, :, None, None]]
    value = hcl_loss(loss.fuse(student), teacher)
    # feat_weight 3 times the warm-up at epoch 1.5 of 4: (⌊1.5⌋ + 1) / 4.
    return 3.0 * 0.5 * value, {"reviewkd": value, "warmup": torch.tensor(0.5)}


@case("rkd", distance_weight=10.0, angle_weight=20.0, feat_weight=3.0)
def _rkd(loss, x):
    value, terms = rkd_loss(
        pooled(x.student), pooled(x.teacher), distance_weight=10.0, angle_weight=20.0, return_terms=True
    )
    return 3.0 * value, {"rkd": value, **terms}


@case("sdd", temperature=3.0, grids=[1, 2], base="dkd", alpha=2.0, beta=5.0, warmup_epochs=8.0)
def _sdd(loss, x):
    student = region_logits(x.student["hidden_states"][-1], x.context.student_head, [1, 2])
    with torch.no_grad():
        teacher = region_logits(x.teacher["hidden_states"][-1], x.context.teacher_head, [1, 2])
    value = sdd_dkd_loss(student, teacher, x.batch.labels, alpha=2.0, beta=5.0, temperature=3.0)
    # Warm-up at epoch 1.5 of 8: (⌊1.5⌋ + 1) / 8.
    return 0.25 * value, {"sdd": value, "warmup": torch.tensor(0.25)}


@case("skd", temperature=2.0, tikhonov=0.05)
def _skd(loss, x):
    return skd_total_loss(x.student["logits"], x.teacher["logits"], temperature=2.0, tikhonov=0.05, return_terms=True)


@case("sp", stages=[1, 2], feat_weight=500.0)
def _sp(loss, x):
    return 500.0 * sp_loss(maps(x.student, 1, 2), maps(x.teacher, 1, 2))


@case("vid", init_pred_var=3.0, eps=1e-4, learn_variance=True, stages=[1, 2], teacher_stages=[2, 1], feat_weight=2.0)
def _vid(loss, x):
    # Maps of different sizes: the larger one is pooled to the smaller; the regressor predicts the mean from it.
    pairs = [pool_to_common_size(s, t) for s, t in zip(maps(x.student, 1, 2), maps(x.teacher, 2, 1))]
    means = [regressor(s) for regressor, (s, _) in zip(loss.regressors, pairs)]
    variances = [F.softplus(getattr(loss, f"log_scale_{i}")) + 1e-4 for i in range(2)]
    return 2.0 * vid_loss(means, [t for _, t in pairs], variances)


def _assert_module_is_function(key, kwargs, functional, setup):
    loss = create_loss(key, context=setup.context, **kwargs).train()
    # The module's state before its forward (CRD's memory banks change in the forward).
    before = copy.deepcopy(loss)
    torch.manual_seed(0)
    out = loss(setup.student, setup.teacher, setup.batch)
    torch.manual_seed(0)  # the same draws (CRD's negatives)
    expected = functional(before, setup)
    expected, terms = expected if isinstance(expected, tuple) else (expected, {})
    torch.testing.assert_close(out["loss"], expected, rtol=0, atol=0)
    for name, value in terms.items():
        torch.testing.assert_close(out[name], value.detach(), rtol=0, atol=0, msg=f"{key}: {name}")


@pytest.mark.parametrize("key", list_losses())
def test_module_loss_equals_its_pure_function(key, request):
    if key not in CASES:
        pytest.fail(f"Loss {key!r} has no entry in CASES ({__name__}): add its functional form there.")
    # A loss that serves no classification task runs on the dense outputs, a label-free one on backbone features.
    tasks = get_loss_class(key).tasks
    name = "setup" if IMAGE_CLASSIFICATION in tasks else "feature_setup" if IMAGE_FEATURE_EXTRACTION in tasks else None
    setup = request.getfixturevalue(name or "dense_setup")
    _assert_module_is_function(key, *CASES[key], setup)


@pytest.mark.parametrize("key", sorted(DENSE_CASES))
def test_module_loss_equals_its_pure_function_on_dense_outputs(key, dense_setup):
    _assert_module_is_function(key, *DENSE_CASES[key], dense_setup)


def test_every_case_is_a_registered_loss():
    assert sorted(CASES) == list_losses()
    assert set(DENSE_CASES) <= set(CASES)
