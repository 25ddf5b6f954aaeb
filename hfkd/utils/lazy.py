"""Lazy exports (PEP 562): a package names its public objects without importing the modules that define them.

`import hfkd` then costs almost nothing; `hfkd.DistillationTrainer` imports `hfkd.training.trainer` on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package`: `exports` maps each public name to the module that defines it.

    A name is imported on first access and kept in the package's `namespace`, so later accesses are plain lookups.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
