"""Runs examples/run_image_distill.py in a subprocess that kills itself (SIGKILL) at a chosen point, for the
fault-injection tests: HFKD_TEST_KILL_AT_STEP=N after optimizer step N, HFKD_TEST_KILL_SAVING=N while checkpoint-N is
being written (after its weights, before its optimizer state)."""

import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402

from hfkd import DistillationTrainer  # noqa: E402


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _die()


if "HFKD_TEST_KILL_AT_STEP" in os.environ:
    step = int(os.environ["HFKD_TEST_KILL_AT_STEP"])
    init = DistillationTrainer.__init__

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(KillAtStep(step))

    DistillationTrainer.__init__ = patched_init

if "HFKD_TEST_KILL_SAVING" in os.environ:
    folder = f"checkpoint-{int(os.environ['HFKD_TEST_KILL_SAVING'])}"
    save = torch.save

    def patched_save(obj, path, *args, **kwargs):
        if folder in str(path) and str(path).endswith("optimizer.pt"):
            _die()
        return save(obj, path, *args, **kwargs)

    torch.save = patched_save

if __name__ == "__main__":
    run_image_distill.main(sys.argv[1:])
