"""A mapping given as an argument: a dict from Python, a JSON object on the command line or in a recipe, or the path
of a JSON file that holds one (`--teacher_label_map`, `--baseline_metrics`).

One parser for every such argument (the loss kwargs, the teacher's `from_pretrained` kwargs, the timm optimiser's
kwargs, a label map, baseline metrics), so that each says the same about a bad value.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hfkd.utils.errors import UsageError


def parse_json_mapping(name: str, value: Any, *, files: bool = False) -> dict[str, Any]:
    """`value` as a dict: a mapping as it is, a JSON object string parsed; `None` or `""` give `{}`.

    Args:
        name (`str`): the argument, as the message names it (`distill_loss_kwargs`, `--teacher_label_map`).
        value: the mapping, its JSON text, or (with `files`) the path of a JSON file holding it.
        files (`bool`, *optional*, defaults to `False`): a string naming an existing file is read as JSON.

    Raises:
        `UsageError`: the text is not JSON, or not an object; the message names the argument and gives an example.
    """
    if value is None or value == "":
        return {}
    if isinstance(value, str) and files and os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            try:
                value = json.load(f)
            except json.JSONDecodeError as err:
                raise UsageError(f"`{name}`: the file {value!r} is not JSON ({err.msg}, line {err.lineno}).") from None
    elif isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            what = "a JSON object or the path of a JSON file holding one" if files else (
                "a JSON object such as '{\"temperature\": 4.0}'"
            )
            raise UsageError(f"`{name}` must be {what}, got {value!r} ({err.msg}).") from None
    if not isinstance(value, dict):
        raise UsageError(f"`{name}` must be a mapping (JSON object on the command line), got {value!r}.")
    return dict(value)
