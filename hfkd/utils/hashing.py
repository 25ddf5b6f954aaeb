"""Hashes that identify what a run used: a network's weights, however it is wrapped, and any named tensors."""

from __future__ import annotations

import hashlib

import torch


def weights_sha256(model_or_state_dict: torch.nn.Module | dict[str, torch.Tensor]) -> str:
    """A hash of a network's weights (names, dtypes, shapes and values, in name order), however it is wrapped: names
    are taken after their last `timm_model.`, so a `TimmWrapper` model, its timm model and its saved safetensors agree.
    """
    state = model_or_state_dict
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    return tensors_sha256({name.rsplit("timm_model.", 1)[-1]: tensor for name, tensor in state.items()})


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of named tensors: names, dtypes, shapes and values, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
