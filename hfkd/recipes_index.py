"""`python -m hfkd.recipes_index`: an alias of `hfkd recipes-index` (`hfkd.commands.recipes_index`), kept so
earlier commands work."""

import sys

from hfkd.commands.cli import run_command
from hfkd.commands.recipes_index import main

if __name__ == "__main__":
    sys.exit(run_command(main, "hfkd recipes-index"))
