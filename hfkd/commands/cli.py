"""The `hfkd` command: one entry point for every subcommand, as `accelerate` and `trl` have.

    hfkd distill --teacher <model> --student <model> --dataset <data> --output_dir runs/x   # train a student
    accelerate launch -m hfkd distill ...                                                  # the same, distributed
    hfkd cache | convert | report | recipes-index ...                                      # the other tools

Each subcommand is a function of a module of `hfkd.commands` that takes its arguments, imported only when it
runs (so `hfkd --help` loads no torch). Errors follow one rule (`run_command`): what the user gave that cannot work
(`UsageError`, and argparse's errors) is one line, `hfkd <command>: error: ...`, with no traceback unless
`HFKD_TRACEBACK=1`; every other exception (a library bug, an out-of-memory error in the middle of training) keeps
its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from hfkd.utils.errors import UsageError
from hfkd.version import __version__

# name -> ("module:function" run with the command's arguments, one line for `hfkd --help`), in the order listed.
COMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("hfkd.commands.distill:main", "Distil a teacher into a student: train, evaluate, save, model card."),
    "cache": ("hfkd.commands.cache:command", "Run a teacher once over the training views and store its outputs."),
    "convert": ("hfkd.commands.convert:main", "Convert a released CIFAR-100 teacher checkpoint into a model folder."),
    "report": ("hfkd.commands.report:main", "Tabulate finished runs next to the published numbers."),
    "recipes-index": ("hfkd.commands.recipes_index:main", "Rebuild the recipe tables of recipes/README.md."),
}


TRACEBACK_HINT = "(HFKD_TRACEBACK=1 shows where it was raised.)"


class OneLineErrors:
    """An argparse parser whose errors are one line, `<prog>: error: <message>. (--help lists the flags.)`, instead
    of the usage text followed by the error."""

    prog: str

    def error(self, message: str) -> NoReturn:
        required = "the following arguments are required:"
        if message.startswith(required):  # `--a/--a-twin/--alias, --b` -> `--a (or --alias) and --b`
            missing = []
            for spellings in message.removeprefix(required).strip().split(", "):
                names = [s for s in spellings.split("/") if not (s.startswith("--") and "-" in s[2:])]
                missing.append(names[0] + (f" (or {', '.join(names[1:])})" if len(names) > 1 else ""))
            message = f"missing {' and '.join(missing)}"
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}. (--help lists the flags.)\n")  # type: ignore[attr-defined]


class CommandParser(OneLineErrors, argparse.ArgumentParser):
    """The parser of an `hfkd` subcommand (`prog="hfkd <command>"`), with one-line errors."""


def run_command(main: Callable[[list[str] | None], Any], prog: str, argv: Sequence[str] | None = None) -> int:
    """Run a command's `main(argv)` and return its exit status: the `int` it returns, else 0.

    A `UsageError` (a value the user gave that cannot work; its message says which and how to fix it) exits with
    status 1 and one line on stderr, `<prog>: error: <message>`, plus the exception's notes; `HFKD_TRACEBACK=1`
    raises it instead, with its traceback. Every other exception propagates untouched, traceback and all.
    """
    try:
        result = main(None if argv is None else list(argv))
    except UsageError as error:
        if os.environ.get("HFKD_TRACEBACK"):
            raise
        notes = "".join(f"\n{note}" for note in getattr(error, "__notes__", []))
        sys.stderr.write(f"{prog}: error: {error}{notes}\n{TRACEBACK_HINT}\n")
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _top_level_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS) + 3
    commands = "".join(f"\n  {name:<{width}}{summary}" for name, (_, summary) in COMMANDS.items())
    parser = CommandParser(
        prog="hfkd",
        usage="hfkd <command> [<args>]",
        description=f"Knowledge distillation for image classifiers on the Hugging Face stack.\n\ncommands:{commands}",
        epilog="`hfkd <command> --help` shows a command's flags. On several processes or machines:\n"
        "  accelerate launch [launch flags] -m hfkd distill ...    (also -m hfkd cache ...)",
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=22, width=119),
    )
    parser.add_argument("--version", action="version", version=f"hfkd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`hfkd <command> [<args>]`: run one subcommand; `hfkd --help` lists them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        _top_level_parser().print_help()
        return 2
    if argv[0].startswith("-"):
        _top_level_parser().parse_args(argv)  # --help and --version exit here, any other flag is an error
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _top_level_parser().error(f"unknown command {name!r}{hint}; the commands are {', '.join(COMMANDS)}")
    module, function = COMMANDS[name][0].split(":")
    return run_command(getattr(importlib.import_module(module), function), f"hfkd {name}", rest)
