"""Seeded inputs shared by the feature-loss tests: stage maps and the model outputs that carry them."""

import torch
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention


def seeded_maps(shapes, seed, scale=1.0, relu=False):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(*shape, generator=g, dtype=torch.float64) * scale for shape in shapes]
    return [m.relu() if relu else m for m in maps]


def output_with(maps):
    return ImageClassifierOutputWithNoAttention(logits=torch.zeros(maps[0].shape[0], 5), hidden_states=tuple(maps))


def as_numpy(maps):
    return [m.detach().double().numpy() for m in maps]
