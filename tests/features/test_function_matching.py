"""Function matching (Beyer et al.): the teacher sees the student's view, at its own size, and Mixup mixes both
models' images alike, with no labels."""

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from hfkd.data.batch_transform import make_transform_fn
from hfkd.data.mixing import BatchMixer
from hfkd.data.transforms import ImageConfig, build_transforms


def test_the_teacher_gets_the_students_crop_and_flip_at_its_own_size():
    student = build_transforms(ImageConfig(size=96), train=True, train_augment="rrc")
    teacher = build_transforms(ImageConfig(size=64, mean=(0.5,), std=(0.5,)), train=True, train_augment="rrc")
    transform = make_transform_fn(student, [teacher], "image", None, seed=3)
    assert transform.modes == ["replay"]
    y, x = np.mgrid[0:160, 0:200]
    image = PILImage.fromarray(np.stack([x % 200, y % 160, (x * y) % 251], -1).astype(np.uint8))
    batch = transform({"image": [image, image], "sample_index": [0, 1]})
    assert "labels" not in batch
    for row in range(2):
        student_view, teacher_view = batch["pixel_values"][row], batch["teacher_pixel_values"][row]
        # The student's view renormalised and resized to the teacher's side is the teacher's view, up to resampling.
        mean, std = (
            torch.tensor([0.485, 0.456, 0.406])[:, None, None],
            torch.tensor([0.229, 0.224, 0.225])[:, None, None],
        )
        as_teacher = (student_view * std + mean - 0.5) / 0.5
        resized = F.interpolate(as_teacher[None], size=(64, 64), mode="bilinear", antialias=True)[0]
        assert (resized - teacher_view).abs().mean() < 0.05
    # Two samples draw two crops: the match above is not that of one fixed view.
    assert (batch["teacher_pixel_values"][0] - batch["teacher_pixel_values"][1]).abs().mean() > 0.05


def test_mixup_mixes_both_models_images_by_one_draw_and_drops_the_labels():
    args = SimpleNamespace(mixes_batches=True, distill_mixup=1.0, distill_cutmix=0.0, seed=0, process_index=0,
                           label_smoothing_factor=0.0)  # fmt: skip
    mixer = BatchMixer.for_run(args, model=None, soft_targets=False)
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, 12, 12, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    mixed = mixer({"pixel_values": student, "teacher_pixel_values": teacher, "labels": torch.arange(4)}, step=0)
    assert "labels" not in mixed
    # λ from the student's mix (x_i λ + x_(B-1-i) (1 - λ)), then the teacher's must be the same blend.
    difference = (student - student.flip(0)).flatten()
    lam = float(((mixed["pixel_values"] - student.flip(0)).flatten() @ difference) / (difference @ difference))
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed["teacher_pixel_values"], lam * teacher + (1 - lam) * teacher.flip(0))
