"""FixMatch's RandAugment with Cutout (hfkd.data.fixmatch, `--train_augment fixmatch`): each op against a direct
computation (numpy, or PIL's own primitives), the draws (2 ops with replacement, values over each op's range, Cutout
always), and the pipeline `fixmatch` builds."""

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageFilter
from torchvision.transforms import v2

from hfkd.data import fixmatch
from hfkd.data.fixmatch import FIXMATCH_OPS, FixMatchRandAugment, cutout, cutout_fill
from hfkd.data.transforms import ImageConfig, build_transforms


@pytest.fixture
def image() -> PILImage.Image:
    rng = np.random.default_rng(0)
    return PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def array(image: PILImage.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def test_pixel_ops_against_numpy(image):
    pixels = array(image)
    assert np.array_equal(array(fixmatch.identity(image, 0.7)), pixels)
    for value in (0.0, 0.5, 0.99):  # the range (0, 1) truncates to 0 bits, raised to 1: the top bit
        assert np.array_equal(array(fixmatch.posterize(image, value)), pixels & 0x80)
    for threshold in (0.0, 100.5, 256.0):
        assert np.array_equal(array(fixmatch.solarize(image, threshold)),
                              np.where(pixels < threshold, pixels, 255 - pixels))  # fmt: skip
    dull = pixels // 2 + 40  # each channel within [40, 167]: stretched to [0, 255] by a per-channel lookup
    low, high = dull.min(axis=(0, 1)), dull.max(axis=(0, 1))
    scale = 255.0 / (high - low)
    stretched = np.clip((dull * scale + -low * scale).astype(np.int64), 0, 255)
    dull_image = PILImage.fromarray(dull.astype(np.uint8))
    assert np.array_equal(array(fixmatch.auto_contrast(dull_image, 0.3)), stretched)


def test_enhance_ops_blend_towards_their_degenerate_image(image):
    for value in (0.05, 0.5, 0.95):
        black = PILImage.new("RGB", image.size)
        grey = image.convert("L").convert("RGB")
        mean = int(np.asarray(image.convert("L")).mean() + 0.5)
        flat = PILImage.new("RGB", image.size, (mean, mean, mean))
        assert array(fixmatch.brightness(image, value)).tolist() == array(PILImage.blend(black, image, value)).tolist()
        assert array(fixmatch.color(image, value)).tolist() == array(PILImage.blend(grey, image, value)).tolist()
        assert array(fixmatch.contrast(image, value)).tolist() == array(PILImage.blend(flat, image, value)).tolist()
        smooth = image.filter(ImageFilter.SMOOTH)
        sharpened = array(PILImage.blend(smooth, image, value))
        inner = array(fixmatch.sharpness(image, value))[1:-1, 1:-1]  # PIL keeps the border pixels as they were
        assert np.array_equal(inner, sharpened[1:-1, 1:-1])


def test_geometric_ops_sample_nearest_and_fill_black(image):
    pixels = array(image)
    shifted = np.zeros_like(pixels)
    shifted[:, :12] = pixels[:, 4:]  # 0.25 x 16 px: the content moves 4 px left
    assert np.array_equal(array(fixmatch.translate_x(image, 0.25)), shifted)
    shifted = np.zeros_like(pixels)
    shifted[4:] = pixels[:12]  # -0.25: 4 px down
    assert np.array_equal(array(fixmatch.translate_y(image, -0.25)), shifted)
    assert np.array_equal(array(fixmatch.rotate(image, 90)), np.rot90(pixels, 1))  # counter-clockwise
    # Shear: the output pixel (x, y) takes the input's nearest to (x + v y, y), pixel centres at .5.
    value = 0.3
    ys, xs = np.mgrid[0:16, 0:16]
    source = np.floor(xs + 0.5 + value * (ys + 0.5)).astype(int)
    inside = source < 16
    sheared = np.where(inside[..., None], pixels[ys, np.clip(source, 0, 15)], 0)
    assert np.array_equal(array(fixmatch.shear_x(image, value)), sheared)
    assert np.array_equal(array(fixmatch.shear_y(image.transpose(PILImage.Transpose.TRANSPOSE), value)),
                          sheared.transpose(1, 0, 2))  # fmt: skip


def test_cutout_fills_a_square_from_the_clipped_corner(image):
    pixels = array(image)
    expected = pixels.copy()
    # side 0.25 x 16 = 4 from the corner (8 - 2, 6 - 2) = (6, 4); PIL draws both far edges: 5 x 5 pixels.
    expected[4:9, 6:11] = (125, 123, 114)
    assert np.array_equal(array(cutout(image, 0.25, 8.0, 6.0)), expected)
    assert np.array_equal(array(image), pixels)  # on a copy
    expected = pixels.copy()
    expected[0:7, 0:7] = (125, 123, 114)  # clipped at the top-left, side 6.4 from (0, 0)
    assert np.array_equal(array(cutout(image, 0.4, 1.5, 2.0)), expected)
    assert cutout(image, 0.0, 5.0, 5.0) is image
    assert cutout_fill("L") == (125 * 19595 + 123 * 38470 + 114 * 7471 + 0x8000) >> 16 == 123  # PIL's RGB -> L
    grey = cutout(image.convert("L"), 0.25, 8.0, 6.0)
    assert np.asarray(grey)[4:9, 6:11].tolist() == [[123] * 5] * 5


def test_randaugment_draws_two_ops_with_replacement_then_cutout(image, monkeypatch):
    drawn, cut = [], []

    def recorder(name):
        return lambda img, value: drawn[-1].append((name, value)) or img

    ops = tuple((name, recorder(name), low, high) for name, _, low, high in FIXMATCH_OPS)
    monkeypatch.setattr(fixmatch, "FIXMATCH_OPS", ops)
    monkeypatch.setattr(fixmatch, "cutout", lambda img, fraction, x, y: cut.append((fraction, x, y)) or img)
    augment = FixMatchRandAugment()
    torch.manual_seed(0)
    for _ in range(3000):
        drawn.append([])
        augment(image)
    assert all(len(ops) == 2 for ops in drawn) and len(cut) == 3000  # Cutout every time
    names = [name for ops in drawn for name, _ in ops]
    counts = np.bincount([[n for n, *_ in FIXMATCH_OPS].index(name) for name in names], minlength=14)
    assert counts.min() > 6000 / 14 * 0.8 and counts.max() < 6000 / 14 * 1.2  # uniform over the 14
    assert sum(a == b for (a, _), (b, _) in drawn) > 3000 / 14 * 0.7  # with replacement
    ranges = {name: (low, high) for name, _, low, high in FIXMATCH_OPS}
    for name, (low, high) in ranges.items():
        values = [value for ops in drawn for op, value in ops if op == name]
        assert low <= min(values) and max(values) < high
        assert min(values) < low + 0.05 * (high - low) and max(values) > high - 0.05 * (high - low)
    fractions, xs, ys = map(np.array, zip(*cut))
    assert 0 <= fractions.min() < 0.01 and 0.49 < fractions.max() < 0.5
    assert 1 < xs.min() < 1.1 and 15.9 < xs.max() <= 16 and 1 < ys.min() and ys.max() <= 16  # numpy's uniform(w)


def test_fixmatch_augment_is_crop_flip_then_randaugment_and_seeded():
    small = build_transforms(ImageConfig(size=(32, 32)), True, train_augment="fixmatch")
    kinds = [type(step) for step in small.geometry.transforms]
    assert kinds == [v2.Resize, v2.RandomCrop, v2.RandomHorizontalFlip, FixMatchRandAugment, v2.ToImage]
    large = build_transforms(ImageConfig(size=(64 + 8, 64 + 8)), True, train_augment="fixmatch")
    assert [type(step) for step in large.geometry.transforms][:3] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip,
                                                                       FixMatchRandAugment]  # fmt: skip
    assert build_transforms(ImageConfig(size=(32, 32)), False, train_augment="fixmatch").train_augment == "none"
    picture = PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(4)
    first = small(picture)
    torch.manual_seed(4)
    assert torch.equal(small(picture), first)
