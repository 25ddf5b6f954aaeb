"""Models: resolving a name to a model, loading it, and what hfkd reads off a model.

- `loading`: Hub ids, timm ids, local folders, timm names and aliases (`MODEL_ALIASES`) to loaded models;
- `availability`: whether a model is on this machine or reachable, and its label count, before any weight loads;
- `label_space`: a teacher's classes against the student's and the dataset's;
- `features`: running a model for a feature loss (hidden states, pre-activation maps, probed shapes, heads);
- `distillation_head`: students with a class and a distillation head (DeiT), their training outputs and checks;
- `export`: a timm student saved so that both transformers and timm load it;
- `provenance` and `convert`: where a teacher's weights came from, and the released CIFAR-100 teachers converted;
- `cifar`: the CIFAR-100 networks of the distillation tables, registered with timm when imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfkd.utils.lazy import lazy_exports

_EXPORTS = {
    "MODEL_ALIASES": "hfkd.models.loading",
    "ModelSpec": "hfkd.models.loading",
    "resolve_model_name": "hfkd.models.loading",
    "load_image_classifier": "hfkd.models.loading",
    "load_image_processor": "hfkd.models.loading",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from hfkd.models.loading import (  # noqa: F401
        MODEL_ALIASES,
        ModelSpec,
        load_image_classifier,
        load_image_processor,
        resolve_model_name,
    )
