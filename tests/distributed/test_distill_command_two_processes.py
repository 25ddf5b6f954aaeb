"""`accelerate launch -m hfkd distill` over two CPU processes (gloo): the command trains as one distributed run, each
process on its share of every batch, and the main process writes the run's files. On CPU the processes form one
group only with the run's own `--use_cpu` (`accelerate launch --cpu` would start a single process)."""

import json

import numpy as np
import pytest
from PIL import Image as PILImage
from transformers import AutoModelForImageClassification, ViTImageProcessor

from ..testing_utils import perturbed, slow, tiny_resnet
from .launch import launch_two, needs_launcher


@slow
@needs_launcher
def test_hfkd_distill_runs_under_accelerate_launch(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("validation", 2)):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                PILImage.fromarray(image).save(tmp_path / "data" / split / name / f"{i}.png")
    teacher = perturbed(tiny_resnet(2, wide=True, seed=2), seed=5)
    for name, model in (("teacher", teacher), ("student", tiny_resnet(2))):
        model.save_pretrained(tmp_path / name)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / name)
    out = tmp_path / "run"

    launch_two("-m", "hfkd", "distill", "--student", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
               "--loss", "kd", "--dataset", str(tmp_path / "data"), "--output_dir", str(out), "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
               "--disable_tqdm", "true", "--use_cpu")  # fmt: skip

    state = json.loads((out / "trainer_state.json").read_text())
    # 16 training images, 2 per process and step: 4 steps an epoch with two processes (8 with one).
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(0.5)
    assert json.loads((out / "distill_config.json").read_text())["distill_loss"] == "kd"
    assert 0.0 <= json.loads((out / "eval_results.json").read_text())["eval_accuracy"] <= 1.0
    assert (out / "README.md").is_file()
    AutoModelForImageClassification.from_pretrained(out)  # the saved student loads
