"""Loss registry: `register_loss`, `create_loss`, `get_loss_class`, `list_losses`."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from hfkd.losses.base import KNOWN_TASKS, DistillationLoss, LossContext
from hfkd.utils.errors import UnknownNameError, UsageError

CE_ONLY = "ce"
"""The loss key that is no distillation loss: cross-entropy on the labels alone, without a teacher (teacher
fine-tuning and the CE baseline). It is never registered: the arguments, the trainer and the model card test for it."""


_LOSSES: dict[str, type[DistillationLoss]] = {}


def register_loss(key: str) -> Callable[[type[DistillationLoss]], type[DistillationLoss]]:
    """Class decorator that registers a `DistillationLoss` under `key` (lowercase, unique)."""
    if not key or key != key.lower():
        raise UsageError(f"Loss keys are non-empty lowercase strings, got {key!r}.")

    def decorator(cls: type[DistillationLoss]) -> type[DistillationLoss]:
        if key in _LOSSES:
            raise UsageError(
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
        tasks = cls.tasks
        if not (isinstance(tasks, frozenset) and tasks and tasks <= KNOWN_TASKS):
            raise TypeError(
                f"{cls.__name__}.tasks must be a non-empty frozenset of {', '.join(sorted(KNOWN_TASKS))}, "
                f"got {tasks!r}."
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
        raise UnknownNameError(
            f"Unknown distillation loss {key!r}.{hint} Registered losses: {', '.join(list_losses())}."
        ) from None


def _takes_context(cls: type[DistillationLoss]) -> bool:
    return "context" in inspect.signature(cls).parameters


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type annotation `hint` (the kinds loss constructors use; anything else passes)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    return True


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _check_types(key: str, cls: type[DistillationLoss], kwargs: Mapping[str, Any]) -> None:
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return
    for name, value in kwargs.items():
        if name in hints and not _matches(value, hints[name]):
            raise UsageError(
                f"Loss {key!r}: `{name}` must be {_type_name(hints[name])}, got {value!r} ({type(value).__name__})."
            )


def resolve_loss_kwargs(key: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Bind `kwargs` against the loss's constructor and return them with the defaults filled in.

    A misspelled or missing keyword raises `TypeError` naming the loss, its accepted keywords and the bad key; a
    value of the wrong type (`"four"` for a temperature) raises `ValueError` naming the keyword and the type.
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
    _check_types(key, cls, kwargs)
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
