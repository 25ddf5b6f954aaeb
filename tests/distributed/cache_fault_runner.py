"""Runs `python -m hfkd.teacher_cache` in a process that kills itself (SIGKILL) while it writes its shards, for the
resume tests: with HFKD_TEST_KILL_AT_SHARD=N, N shards are written, the next one's temporary file gets half its
bytes, and the process dies before renaming it into place."""

import os
import signal
import sys

from hfkd.commands.cache import main
from hfkd.teachers.cache import build as cache_build

if "HFKD_TEST_KILL_AT_SHARD" in os.environ:
    finished = int(os.environ["HFKD_TEST_KILL_AT_SHARD"])
    save_file = cache_build.save_file
    written = []

    def save_then_maybe_die(tensors, path, *args, **kwargs):
        save_file(tensors, path, *args, **kwargs)
        if "shard_" not in os.path.basename(path):
            return
        if len(written) == finished:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        written.append(path)

    cache_build.save_file = save_then_maybe_die

if __name__ == "__main__":
    main(sys.argv[1:])
