"""Data: what a batch holds, where images come from, and how each model's view of them is made.

- `batch`: the keys of a distillation batch, defined once;
- `datasets`, `decode`, `demo`, `streaming`: datasets from the Hub, local folders or the embedded demo data, map-style
  or streamed, their columns and labels checked, their images decoded;
- `transforms`: `ImageConfig` (what a model wants) and torchvision v2 transforms; `batch_transform`: the dataset
  transform that gives every model its own pixels of the same crop (`make_transform_fn`); `mixing`: Mixup and
  CutMix; `collator`: `DistillationCollator`; `saved_preprocessing`: what a saved student says of its preprocessing;
- `views`: several augmented copies of each training image per epoch and where they go (StreamLined's concatenated
  epoch, DeiT's repeated augmentation); `fixmatch`: FixMatch's RandAugment with Cutout (`--train_augment fixmatch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports

_EXPORTS = {
    "DistillationCollator": "hfkd.data.collator",
    "fast_tensor_columns": "hfkd.data.collator",
    "make_transform_fn": "hfkd.data.batch_transform",
    "set_image_transform": "hfkd.data.batch_transform",
    "ImageConfig": "hfkd.data.transforms",
    "build_transforms": "hfkd.data.transforms",
    "image_config_for_model": "hfkd.data.transforms",
    "load_image_dataset": "hfkd.data.datasets",
    "load_demo_dataset": "hfkd.data.demo",
    "expand_views": "hfkd.data.views",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from hfkd.data.batch_transform import make_transform_fn, set_image_transform  # noqa: F401
    from hfkd.data.collator import DistillationCollator, fast_tensor_columns  # noqa: F401
    from hfkd.data.datasets import load_image_dataset  # noqa: F401
    from hfkd.data.demo import load_demo_dataset  # noqa: F401
    from hfkd.data.transforms import ImageConfig, build_transforms, image_config_for_model  # noqa: F401
    from hfkd.data.views import expand_views  # noqa: F401
