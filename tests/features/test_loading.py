"""Checkpoints load as backbones: a CLIP or SigLIP checkpoint as its vision tower with its weights, a classifier as its
backbone without the head; a model whose features cannot be read is refused from its config."""

import json

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, ResNetConfig, ResNetForImageClassification, SiglipConfig, SiglipModel

from hfkd.models.availability import model_config
from hfkd.models.embeddings import check_backbone_config
from hfkd.models.loading import load_backbone, resolve_model_name
from hfkd.utils.errors import UsageError

VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
          "intermediate_size": 32}  # fmt: skip
TEXT = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}


@pytest.mark.parametrize("config_cls,model_cls,tower", [(CLIPConfig, CLIPModel, "CLIPVisionModel"),
                                                       (SiglipConfig, SiglipModel, "SiglipVisionModel")])  # fmt: skip
def test_a_multimodal_checkpoint_loads_as_its_vision_tower(config_cls, model_cls, tower, tmp_path):
    torch.manual_seed(0)
    full = model_cls(config_cls(vision_config=VISION, text_config=TEXT)).eval()
    full.save_pretrained(tmp_path)
    spec = resolve_model_name(str(tmp_path))
    check_backbone_config(model_config(spec), "clip")
    loaded = load_backbone(spec).eval()
    assert type(loaded).__name__ == tower
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).pooler_output,
                                   full.vision_model(pixel_values=pixels).pooler_output)  # fmt: skip


def test_a_classifier_checkpoint_loads_as_its_backbone_and_unknown_configs_are_refused(tmp_path):
    torch.manual_seed(0)
    classifier = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    classifier.eval().save_pretrained(tmp_path / "classifier")
    backbone = load_backbone(str(tmp_path / "classifier")).eval()
    assert type(backbone).__name__ == "ResNetModel"
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(
            backbone(pixel_values=pixels).pooler_output, classifier.resnet(pixel_values=pixels).pooler_output
        )
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(UsageError, match=r"'vit' \(model_type 'vit'\): hfkd cannot read"):
        check_backbone_config(model_config(resolve_model_name(str(tmp_path / "vit"))), "vit")
