"""`python -m hfkd.convert`: an alias of `hfkd convert` (`hfkd.commands.convert`), kept so earlier commands work."""

import sys

from hfkd.commands.cli import run_command
from hfkd.commands.convert import main

if __name__ == "__main__":
    sys.exit(run_command(main, "hfkd convert"))
