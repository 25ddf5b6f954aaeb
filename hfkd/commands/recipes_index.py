"""`hfkd recipes-index`: rebuild the recipe tables of `recipes/README.md` from the recipes and finished runs.

    hfkd recipes-index [--runs runs/] [--readme recipes/README.md] [--check]

What the tables hold: `hfkd.results.recipes_index`.
"""

from __future__ import annotations

from pathlib import Path

from hfkd.commands.cli import CommandParser
from hfkd.results.recipes_index import update_readme
from hfkd.utils.errors import UsageError


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="hfkd recipes-index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default="recipes/README.md", help="The README whose tables to rebuild.")
    parser.add_argument("--runs", nargs="*", default=[], help="Folders searched recursively for finished runs.")
    parser.add_argument("--check", action="store_true", help="Only report whether the README is up to date.")
    args = parser.parse_args(argv)
    if not Path(args.readme).is_file():
        raise UsageError(
            f"{args.readme} does not exist: run this from the repository's root, or pass --readme <recipes/README.md>."
        )
    new_text = update_readme(args.readme, args.runs)
    if Path(args.readme).read_text(encoding="utf-8") == new_text:
        print(f"{args.readme} is up to date.")
        return 0
    if args.check:
        print(f"{args.readme} is out of date: run `hfkd recipes-index --readme {args.readme}`.")
        return 1
    Path(args.readme).write_text(new_text, encoding="utf-8")
    print(f"Rebuilt the recipe tables of {args.readme}.")
    return 0
