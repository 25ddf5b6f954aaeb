"""`read_image_features` against each model's own outputs read by hand: which token is the embedding, which tokens
are patches, in which order they lie on the grid (non-square inputs, registers, CLIP's layer norm)."""

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTModel

from hfkd.models.embeddings import FeatureReader, probe_image_features, read_image_features
from hfkd.utils.errors import UsageError

from .tiny import tiny_resnet_backbone, tiny_teacher, tiny_timm_backbone


def _pixels(height: int, width: int) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))


def _patch(tokens: torch.Tensor, first: int, width: int, i: int, j: int) -> torch.Tensor:
    """The token of grid position (i, j): patch embeddings are flattened row by row after `first` prefix tokens."""
    return tokens[:, first + i * width + j]


@pytest.mark.parametrize("kind,prefix", [("dinov2", 1), ("dinov2_registers", 3), ("dinov3", 3)])
def test_dinov2_embedding_is_the_normed_class_token_and_patches_follow_class_and_registers(kind, prefix):
    model = tiny_teacher(kind).eval()
    reader = FeatureReader(model)
    with torch.no_grad():
        out = model(pixel_values=_pixels(32, 48))  # a 4 x 6 grid of 8 px patches
        features = reader(out)
    assert torch.equal(features.embedding, out.last_hidden_state[:, 0])
    assert features.feature_map.shape == (2, 24, 4, 6)
    for i, j in [(0, 0), (1, 5), (3, 2)]:
        assert torch.equal(features.feature_map[:, :, i, j], _patch(out.last_hidden_state, prefix, 6, i, j))
    reader.close()
    assert not model._forward_pre_hooks


def test_clip_patches_get_the_post_layernorm_its_pooler_has():
    model = tiny_teacher("clip").eval()
    with torch.no_grad():
        out = model(pixel_values=_pixels(32, 32))
        features = read_image_features(model, out, (32, 32))
        assert torch.equal(features.embedding, out.pooler_output)
        assert torch.allclose(model.post_layernorm(out.last_hidden_state[:, 0]), out.pooler_output)
        for i, j in [(0, 0), (2, 3)]:
            patch = model.post_layernorm(_patch(out.last_hidden_state, 1, 4, i, j))
            assert torch.equal(features.feature_map[:, :, i, j], patch)


@pytest.mark.parametrize("head", [True, False])
def test_siglip_has_no_class_token_and_pools_with_its_head_or_the_mean(head):
    model = tiny_teacher("siglip", vision_use_head=head).eval()
    with torch.no_grad():
        out = model(pixel_values=_pixels(32, 32))
        features = read_image_features(model, out, (32, 32))
    pooled = out.pooler_output if head else out.last_hidden_state.mean(1)
    assert torch.equal(features.embedding, pooled)
    assert torch.equal(features.feature_map[:, :, 3, 1], _patch(out.last_hidden_state, 0, 4, 3, 1))


def test_cnn_backbones_and_timm_models_give_their_map_and_pooled_features():
    resnet = tiny_resnet_backbone().eval()
    timm_cnn = tiny_timm_backbone().eval()
    timm_vit = tiny_timm_backbone("test_vit2", depth=1).eval()  # no class token, one register
    with torch.no_grad():
        out = resnet(pixel_values=_pixels(48, 48))
        features = read_image_features(resnet, out)
        assert torch.equal(features.feature_map, out.last_hidden_state)
        assert torch.allclose(features.embedding, out.last_hidden_state.mean((2, 3)), atol=1e-6)
        pixels = _pixels(48, 64)
        features = read_image_features(timm_cnn, timm_cnn(pixel_values=pixels))
        maps = timm_cnn.timm_model.forward_features(pixels)
        assert torch.equal(features.feature_map, maps)
        assert torch.allclose(features.embedding, timm_cnn.timm_model.forward_head(maps, pre_logits=True))
        reader = FeatureReader(timm_vit)
        pixels = _pixels(32, 64)  # 2 x 4 patches of 16 px
        features = reader(timm_vit(pixel_values=pixels))
        tokens = timm_vit.timm_model.forward_features(pixels)
    assert features.feature_map.shape == (2, 64, 2, 4)
    assert torch.equal(features.feature_map[:, :, 1, 2], _patch(tokens, 1, 4, 1, 2))


def test_probe_gives_the_sizes_and_classifiers_and_unknown_models_are_named():
    assert probe_image_features(tiny_teacher("dinov2_registers"), _pixels(32, 32)) == (24, (24, 4, 4))
    assert probe_image_features(tiny_resnet_backbone(), _pixels(48, 48)) == (16, (16, 6, 6))
    classifier = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(UsageError, match="ResNetForImageClassification is a classifier.*base_model"):
        FeatureReader(classifier)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32))  # fmt: skip
    with pytest.raises(UsageError, match="off ViTModel.*Dinov2Model"):
        FeatureReader(vit)
