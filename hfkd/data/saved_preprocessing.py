"""What is saved with a student says how it was preprocessed.

A run can change the student's input size (`--image_size`), resampling (`--interpolation`) and normalisation
(`--image_mean`, `--image_std`). `record_image_config` writes that preprocessing where users read it: a timm
student's `pretrained_cfg` (what `timm.data.resolve_data_config` and `TimmWrapperImageProcessor` use) or a
transformers image processor (saved as preprocessor_config.json), so the saved student evaluates as the run did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers.utils import logging

from hfkd.data.transforms import _PIL_FROM_NAME, TINY_IMAGE_SIZE, ImageConfig, _size_dict, image_config_for_model

logger = logging.get_logger(__name__)


def _eval_view(config: ImageConfig) -> tuple[Any, ...]:
    """What `build_transforms` does at evaluation with `config`: the resize, the crop and the normalisation."""
    tiny = max(config.size) <= TINY_IMAGE_SIZE
    return config.size, config.size if tiny else config.eval_resize_size, config.interpolation, config.mean, config.std


def record_image_config(model: Any, processor: Any, config: ImageConfig) -> None:
    """Make what is saved with a student (a timm student's `pretrained_cfg`, else its image processor) describe
    the evaluation preprocessing of `config`, the one it was trained and evaluated with (`--image_size`,
    `--interpolation`), in place; warns when a processor cannot express `config`."""
    if _eval_view(image_config_for_model(model, processor)) == _eval_view(config):
        return
    tiny = max(config.size) <= TINY_IMAGE_SIZE
    model_config = getattr(model, "config", None)
    pretrained_cfg = getattr(model_config, "pretrained_cfg", None)
    if getattr(model_config, "model_type", None) == "timm_wrapper" and isinstance(pretrained_cfg, Mapping):
        pretrained_cfg = dict(pretrained_cfg)
        pretrained_cfg.update(
            input_size=[config.num_channels, *config.size],
            interpolation=config.interpolation,
            mean=list(config.mean),
            std=list(config.std),
        )
        if tiny:  # plain resize: timm's eval with crop_pct 1 (resize the shortest edge, crop the rest)
            pretrained_cfg["crop_pct"] = 1.0
        model_config.pretrained_cfg = pretrained_cfg
        if processor is not None and isinstance(getattr(processor, "data_config", None), Mapping):
            # A TimmWrapperImageProcessor derives its data config and transforms from pretrained_cfg when built.
            processor.__init__(pretrained_cfg=pretrained_cfg, architecture=getattr(model_config, "architecture", None))
    elif processor is not None:
        height, width = config.size
        size = _size_dict(getattr(processor, "size", None))
        crop = getattr(processor, "do_center_crop", False) and _size_dict(getattr(processor, "crop_size", None))
        if getattr(processor, "crop_pct", None) is not None and tiny:
            processor.crop_pct = 1.0
        if crop:
            processor.crop_size = {"height": height, "width": width}
            resize = config.size if tiny else config.eval_resize_size
            square = isinstance(resize, int)
            processor.size = {"shortest_edge": resize} if square else dict(zip(("height", "width"), resize))
        elif "shortest_edge" in size:
            processor.size = {"shortest_edge": height}
        else:
            processor.size = {"height": height, "width": width}
        processor.resample = _PIL_FROM_NAME[config.interpolation]
        processor.image_mean, processor.image_std = list(config.mean), list(config.std)
        processor.do_normalize = True  # mean 0 and std 1 where the processor did not normalise
    saved = image_config_for_model(model, processor)
    if _eval_view(saved) != _eval_view(config):
        logger.warning(
            f"The student's saved preprocessing ({type(processor).__name__}) cannot state what it was evaluated with "
            f"here: {saved} against {config}. Preprocess as the latter when you use it."
        )
