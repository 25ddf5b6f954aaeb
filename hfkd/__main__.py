"""`python -m hfkd <command> ...`: the `hfkd` command, also as `accelerate launch -m hfkd distill ...`."""

import sys

from hfkd.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
