"""HfkdParser: HfArgumentParser plus `--config recipe.yaml` (dataclass defaults < recipe < command line)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config, rest, it = None, [], iter(argv)
    for token in it:
        if token == "--config":
            config = next(it, None)
            if config is None:
                raise ValueError("`--config` needs a path to a recipe YAML file, e.g. `--config recipes/x.yaml`.")
        elif token.startswith("--config="):
            config = token.split("=", 1)[1]
        else:
            rest.append(token)
    return config, rest


class HfkdParser(HfArgumentParser):
    """An `HfArgumentParser` whose `parse(argv)` also reads a flat recipe given with `--config PATH`.

    The recipe is read with `yaml.safe_load`; its keys are dataclass field names and its values become the
    parser's defaults, so a flag on the command line still wins. An unknown key is an error that names the key,
    close matches and the recipe. Mappings (for `distill_loss_kwargs` and similar fields) are passed on as JSON.
    """

    def field_names(self) -> set[str]:
        return {f.name for dtype in self.dataclass_types for f in dataclasses.fields(dtype) if f.init}

    def read_recipe(self, path: str | Path) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Recipe {str(path)!r} does not exist. Pass the path of a YAML file to `--config`.")
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"Recipe {str(path)!r} must be a flat YAML mapping of argument names to values.")
        known = self.field_names()
        unknown = sorted(set(data) - known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), sorted(known), n=2, cutoff=0.6)
                hints.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
            raise ValueError(
                f"Recipe {str(path)!r} has unknown key(s): {', '.join(hints)}. Keys are argument names "
                "as on the command line, without the leading dashes."
            )
        return {key: json.dumps(value) if isinstance(value, dict) else value for key, value in data.items()}

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """Parse `argv` (default `sys.argv[1:]`) into the dataclasses, with `--config` recipe values as defaults.

        Returns the dataclass instances followed by the recipe path (`None` without `--config`).
        """
        config, rest = _split_config_flag(sys.argv[1:] if argv is None else argv)
        if config is not None:
            defaults = self.read_recipe(config)
            for action in self._actions:
                if action.dest in defaults:
                    action.default = defaults[action.dest]
                    action.required = False
        outputs = self.parse_args_into_dataclasses(args=rest)
        return (*outputs, config)
