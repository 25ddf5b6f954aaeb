"""Loss registry: `register_loss`, `create_loss`, `get_loss_class`, `list_losses`."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .base import DistillationLoss, LossContext

_LOSSES: dict[str, type[DistillationLoss]] = {}


def register_loss(key: str) -> Callable[[type[DistillationLoss]], type[DistillationLoss]]:
    """Class decorator that registers a `DistillationLoss` under `key` (lowercase, unique)."""
    if not key or key != key.lower():
        raise ValueError(f"Loss keys are non-empty lowercase strings, got {key!r}.")

    def decorator(cls: type[DistillationLoss]) -> type[DistillationLoss]:
        if key in _LOSSES:
            raise ValueError(
                f"A loss is already registered as {key!r} ({_LOSSES[key].__module__}.{_LOSSES[key].__name__}). "
                "Pick another key for your loss."
            )
        if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
            raise TypeError(f"@register_loss({key!r}) decorates DistillationLoss subclasses, got {cls!r}.")
        flags = sorted(name for name in vars(cls) if name.startswith("requires_"))
        if flags:
            wanted = ", ".join(f"{name.removeprefix('requires_')}=True" for name in flags)
            raise TypeError(
                f"{cls.__name__} declares {', '.join(flags)}; a loss declares what it needs in one place: "
                f"`needs = LossNeeds({wanted})` (hfkd.losses.LossNeeds)."
            )
        cls.key = key
        _LOSSES[key] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    """The registered loss keys, sorted."""
    return sorted(_LOSSES)


def get_loss_class(key: str) -> type[DistillationLoss]:
    """The class registered under `key`; an unknown key raises `KeyError` naming close matches."""
    try:
        return _LOSSES[key]
    except KeyError:
        close = difflib.get_close_matches(str(key), list(_LOSSES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"Unknown distillation loss {key!r}.{hint} Registered losses: {', '.join(list_losses())}."
        ) from None


def _takes_context(cls: type[DistillationLoss]) -> bool:
    return "context" in inspect.signature(cls).parameters


def resolve_loss_kwargs(key: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Bind `kwargs` against the loss's constructor and return them with the defaults filled in.

    A misspelled or missing keyword raises `TypeError` naming the loss, its accepted keywords and the bad key.
    """
    cls = get_loss_class(key)
    kwargs = dict(kwargs or {})
    if "context" in kwargs:
        raise TypeError(f"Loss {key!r}: `context` is supplied by the trainer, not by loss kwargs.")
    signature = inspect.signature(cls)
    accepted = [name for name in signature.parameters if name != "context"]
    try:
        bound = signature.bind_partial(**kwargs) if _takes_context(cls) else signature.bind(**kwargs)
    except TypeError as err:
        unknown = sorted(set(kwargs) - set(accepted))
        what = f"unknown keyword(s) {', '.join(repr(u) for u in unknown)}" if unknown else str(err)
        raise TypeError(
            f"Loss {key!r} ({cls.__name__}): {what}. It accepts: {', '.join(accepted) or 'no keywords'}."
        ) from None
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name != "context"}


def create_loss(key: str, *, context: LossContext | None = None, **kwargs: Any) -> DistillationLoss:
    """Build the loss registered under `key` with `kwargs`; `context` is passed to losses that take it."""
    cls = get_loss_class(key)
    resolved = resolve_loss_kwargs(key, kwargs)
    if _takes_context(cls):
        loss = cls(**resolved, context=context if context is not None else LossContext())
    else:
        loss = cls(**resolved)
    loss._hparams = resolved
    return loss


def validate_loss_kwargs(key: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check `kwargs` for `key` without a model: bind them, then build the loss where it needs no context.

    Building runs the loss's own range checks (a non-positive temperature, a negative weight) at parse time.
    """
    resolved = resolve_loss_kwargs(key, kwargs)
    if not _takes_context(get_loss_class(key)):
        create_loss(key, **resolved)
    return resolved
