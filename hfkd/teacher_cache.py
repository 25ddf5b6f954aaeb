"""`python -m hfkd.teacher_cache`: an alias of `hfkd cache` (`hfkd.commands.cache`), kept so earlier commands work."""

import logging

from hfkd.commands.cache import main

if __name__ == "__main__":
    # The command says what it did (each process its share of the shards); main() called from Python leaves logging.
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    logging.getLogger("hfkd").setLevel(logging.INFO)
    main()
