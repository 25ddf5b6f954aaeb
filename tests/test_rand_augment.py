"""timm's RandAugment and random erasing on the training view (DIST's B2 strategy: rand-m9-mstd0.5, reprob 0.2 in
pixel mode): the ops are timm's own with DIST's parameters, every draw comes from the row's seed, and a teacher's
own view of a row is erased in the same box as the student's."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms import v2

from hfkd.commands.arguments import parse_args
from hfkd.data.batch_transform import make_transform_fn
from hfkd.data.transforms import ImageConfig, build_transforms

CONFIG = ImageConfig(size=32, mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25), interpolation="bicubic")


def _images(count: int, side: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_rand_augment_is_timms_with_dists_parameters():
    """With the crop and flip off, the training view is timm's rand_augment_transform, built as DIST's
    lib/dataset/transform.py builds it (translate_const = 45 % of the side, the mean colour as fill, the model's
    resampling), applied to the resized image on the same Python and NumPy draws."""
    ours = build_transforms(CONFIG, train=True, train_augment="none", rand_augment="rand-m9-mstd0.5")
    theirs = rand_augment_transform(
        "rand-m9-mstd0.5",
        {"translate_const": 14, "img_mean": (128, 102, 76), "interpolation": Image.BICUBIC},
    )
    resize = v2.Resize(32, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    to_float = v2.ToDtype(torch.float32, scale=True)
    normalize = v2.Compose([v2.ToImage(), to_float, v2.Normalize(CONFIG.mean, CONFIG.std)])
    plain = normalize(resize(_images(1)[0]))
    changed = 0
    for seed, image in enumerate(_images(12)):
        _seed_all(seed)
        expected = normalize(theirs(resize(image)))
        _seed_all(seed)
        got = ours(image)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        changed += not torch.equal(got, normalize(resize(image)))
    assert changed >= 6 and plain.shape == (3, 32, 32)  # two ops at p 0.5 each: about 3 in 4 images change
    evaluation = build_transforms(CONFIG, train=False, rand_augment="rand-m9-mstd0.5", random_erasing=1.0)
    assert not evaluation.random and evaluation.rand_augment is None and evaluation.random_erasing == 0.0


def test_random_erasing_fills_one_box_with_noise():
    transform = build_transforms(CONFIG, train=True, train_augment="none", random_erasing=1.0)
    view = transform.view(_images(1)[0])
    before = view.clone()
    erased = transform.erase(view)
    assert torch.equal(view, before)  # erased on a copy
    changed = (erased != view).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and changed.sum() == box.numel()  # one rectangle, every pixel of it replaced
    assert 0.02 * 32 * 32 <= box.numel() <= 32 * 32 / 3 + 32  # timm's area range, up to rounding
    some = build_transforms(CONFIG, train=True, train_augment="none", random_erasing=0.2)
    torch.manual_seed(0)
    random.seed(0)
    rate = sum(not torch.equal(some.erase(view), view) for _ in range(1000)) / 1000
    assert 0.16 <= rate <= 0.24  # binomial(1000, 0.2): 0.2 ± 4 sd


def test_every_draw_comes_from_the_rows_seed():
    student = build_transforms(CONFIG, train=True, rand_augment="rand-m9-mstd0.5", random_erasing=0.5)
    fn = make_transform_fn(student, None, seed=7)
    batch = {"image": _images(6), "label": [0] * 6, "sample_index": list(range(6))}
    state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    first = fn(batch)["pixel_values"]
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])  # the global generators are left as they were
    random.seed(123)
    np.random.seed(123)  # other global states: the same views
    again = fn(batch)["pixel_values"]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    fn.set_epoch(1)
    later = fn(batch)["pixel_values"]
    assert sum(not torch.equal(a, b) for a, b in zip(first, later)) >= 5


@pytest.mark.parametrize("teacher_size", [32, 48], ids=["renorm", "replay"])
def test_a_teachers_own_view_is_erased_in_the_students_box(teacher_size):
    """DIST's teacher sees the student's erased tensor. A teacher with its own mean/std (same geometry) gets the
    same box; at another size, the same draws (its box is placed on its own image)."""
    teacher_config = ImageConfig(size=teacher_size, mean=(0.4, 0.4, 0.4), std=(0.2, 0.3, 0.2))

    def views(erasing: float):
        student = build_transforms(CONFIG, train=True, rand_augment="rand-m9-mstd0.5", random_erasing=erasing)
        teacher = build_transforms(teacher_config, train=True, rand_augment="rand-m9-mstd0.5", random_erasing=erasing)
        out = make_transform_fn(student, teacher, seed=3)(
            {"image": _images(8), "label": [0] * 8, "sample_index": list(range(8))}
        )
        return out["pixel_values"], out["teacher_pixel_values"]

    (student_erased, teacher_erased), (student_plain, teacher_plain) = views(1.0), views(0.0)
    for s_erased, s_plain, t_erased, t_plain in zip(student_erased, student_plain, teacher_erased, teacher_plain):
        student_box = (s_erased != s_plain).any(dim=0)
        teacher_box = (t_erased != t_plain).any(dim=0)
        assert student_box.any() and teacher_box.any()  # the crop, flip and RandAugment draws are unchanged
        if teacher_size == 32:
            assert torch.equal(student_box, teacher_box)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rand_augment", "rand-mzz"], "rand_augment='rand-mzz' is not a timm RandAugment config.*rand-m9-mstd0.5"),
        (["--rand_augment", "augmix-m5"], "not a timm RandAugment config"),
        (["--rand_augment", "rand-q9"], "not a timm RandAugment config"),
        (["--random_erasing", "1.5"], "--random_erasing must be a probability in \\[0, 1\\].*got 1.5"),
        (["--random_erasing", "0.2", "--teacher_cache_dir", "cache"], "a teacher cache .* Drop them"),
    ],
)
def test_bad_values_are_refused_before_anything_loads(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--student", "resnet10t", "--student_pretrained", "false", "--output_dir", "o", *extra])
