"""Start two CPU processes with `accelerate launch` (gloo), as the distributed tests do.

`accelerate launch --cpu --num_processes 2` would start a single process without MPI; the form that starts two on
CPU is `--multi_gpu --num_processes 2`, with the program's own CPU flag (`use_cpu=True` in the TrainingArguments, or
`--use_cpu` for `hfkd.teacher_cache`).
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

LAUNCHER = Path(sys.executable).with_name("accelerate")
needs_launcher = pytest.mark.skipif(
    shutil.which("accelerate") is None and not LAUNCHER.exists(), reason="needs the accelerate launcher"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(*program: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` two processes running `program` (a script and its arguments, or `-m module ...`),
    offline, one thread each; fails the test with the end of stderr when the launch fails."""
    command = [str(LAUNCHER) if LAUNCHER.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), *program]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result
