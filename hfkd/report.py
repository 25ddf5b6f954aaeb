"""`python -m hfkd.report`: an alias of `hfkd report` (`hfkd.commands.report`), kept so earlier commands work."""

import sys

from hfkd.commands.cli import run_command
from hfkd.commands.report import main

if __name__ == "__main__":
    sys.exit(run_command(main, "hfkd report"))
