import pytest
import torch
import torch.nn.functional as F

from hfkd.losses import DistillBatch, ImageFeatures, LossContext, create_loss, dense_loss

from .label_free_reference import bilinear as reference_bilinear
from .label_free_reference import dense as reference_dense

CONTEXT = LossContext(student_embedding_dim=6, teacher_embedding_dim=4, student_feature_shapes=[(6, 5, 7)],
                      teacher_feature_shapes=[(4, 3, 4)])  # fmt: skip


def _maps(seed: int, student=(2, 4, 5, 7), teacher=(2, 4, 3, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*student, generator=g, dtype=torch.float64), torch.randn(
        *teacher, generator=g, dtype=torch.float64
    )


def test_reference_resize_is_torchs_bilinear_without_corners():
    s, _ = _maps(0)
    expected = F.interpolate(s, size=(3, 4), mode="bilinear", align_corners=False)[0].numpy()
    assert reference_bilinear(s[0].numpy(), 3, 4) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "mse"])
@pytest.mark.parametrize("shapes", [((2, 4, 5, 7), (2, 4, 3, 4)), ((1, 3, 2, 2), (1, 3, 4, 4)), ((2, 3, 4, 4),) * 2])
def test_matches_the_equation(distance, shapes):
    s, t = _maps(len(shapes[0]) + shapes[0][-1], *shapes)
    expected = reference_dense(s.numpy(), t.numpy(), distance)
    assert dense_loss(s, t, distance=distance).item() == pytest.approx(expected, rel=1e-12)
    assert dense_loss(s.float(), t.float(), distance=distance).item() == pytest.approx(expected, rel=1e-5)


def test_pinned_value_and_zero_for_a_map_of_the_same_directions():
    s, t = _maps(5)
    # Pinned from label_free_reference.dense on these seeded maps.
    assert dense_loss(s, t).item() == pytest.approx(PINNED_COSINE, rel=1e-12)
    same = F.interpolate(s, size=(3, 4), mode="bilinear", align_corners=False)
    assert dense_loss(s, 2.0 * same).item() == pytest.approx(0.0, abs=1e-12)
    assert dense_loss(s, t, distance="mse").item() != pytest.approx(dense_loss(s, t).item())


PINNED_COSINE = 1.1328310545461575  # label_free_reference.dense(seed 5 maps, "cosine")


def test_module_projects_with_a_1x1_conv_and_gradients_reach_student_and_projection_only():
    loss = create_loss("dense", context=CONTEXT, distance="mse", loss_weight=0.5)
    assert tuple(loss.projection.weight.shape) == (4, 6, 1, 1)
    g = torch.Generator().manual_seed(3)
    student = ImageFeatures(torch.randn(2, 6, generator=g), torch.randn(2, 6, 5, 7, generator=g, requires_grad=True))
    teacher = ImageFeatures(torch.randn(2, 4, generator=g), torch.randn(2, 4, 3, 4, generator=g, requires_grad=True))
    out = loss(student, teacher, DistillBatch())
    expected = dense_loss(loss.projection(student.feature_map), teacher.feature_map, distance="mse")
    assert out["loss"].item() == pytest.approx(0.5 * expected.item(), rel=1e-6)
    out["loss"].backward()
    assert student.feature_map.grad is not None and loss.projection.weight.grad is not None
    assert teacher.feature_map.grad is None


def test_maps_of_other_channels_are_refused():
    with pytest.raises(ValueError, match="batch and channels"):
        dense_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
