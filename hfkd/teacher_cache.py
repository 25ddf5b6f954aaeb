"""`python -m hfkd.teacher_cache`: an alias of `hfkd cache` (`hfkd.commands.cache`), kept so earlier commands work."""

import sys

from hfkd.commands.cache import command
from hfkd.commands.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command(command, "hfkd cache"))
