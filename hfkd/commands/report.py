"""`hfkd report`: finished runs as a results table and chart next to the published numbers.

    hfkd report runs/ [--json out.json] [--markdown out.md] [--png out.png] [--recipes recipes/]

Each run in its task's headline metric (top-1 for classification, mIoU for segmentation). What a row holds:
`hfkd.results.runs`. `--png` needs matplotlib (`pip install "hfkd[plots]"`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hfkd.commands.cli import CommandParser
from hfkd.results.plot import save_png
from hfkd.results.runs import RUN_FILES, find_run_dirs, read_run, run_name, summarise, to_json, to_markdown

MISSING_MATPLOTLIB = (
    'hfkd report --png needs matplotlib, not installed: pip install "hfkd[plots]" (or: pip install matplotlib)\n'
)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="hfkd report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="Run folders, or folders searched recursively for runs.")
    parser.add_argument("--json", help="Write the summary as JSON to this file.")
    parser.add_argument("--markdown", help="Write the markdown table to this file.")
    parser.add_argument("--png", help="Write a bar chart (measured, CE baseline, teacher, published) to this file.")
    parser.add_argument("--recipes", help="Recipes folder, to find a run's recipe when its path moved.")
    args = parser.parse_args(argv)
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.stderr.write(MISSING_MATPLOTLIB)
            return 2

    run_dirs = find_run_dirs(args.paths)
    if not run_dirs:
        sys.stderr.write(
            f"No finished runs under {', '.join(args.paths)}: a finished run folder holds {', '.join(RUN_FILES)} "
            "(hfkd distill writes them when training and evaluation end).\n"
        )
        return 1
    runs = [read_run(d, name=run_name(d, args.paths)) for d in run_dirs]
    summaries = summarise(runs, recipes_dir=args.recipes)
    markdown = to_markdown(summaries)
    sys.stdout.write(markdown)
    if args.markdown:
        Path(args.markdown).write_text(markdown, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(summaries), indent=2) + "\n", encoding="utf-8")
    if args.png:
        save_png(summaries, args.png)
    return 0
