"""Detection distillation over two CPU processes (gloo), a DETR and a torchvision Faster R-CNN (DIST + mimic, whose
1x1 adapters live in the loss module that DDP wraps with the student): it trains, both ranks end with the same
student, and evaluation scores each of the 7 evaluation images once (the ranks' per-image tables gathered, the last
uneven batch included), for the student and the teacher alike. (The update is not compared with one process's: the
detectors' losses and the distillation terms average over each process's boxes, pairs and RoIs.)"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForObjectDetection

from hfkd.models.torchvision_detection import torchvision_detector

from ..detection.test_distill import NAMES, tiny_detr
from ..testing_utils import slow
from .launch import launch_two, needs_launcher

SCRIPT = Path(__file__).with_name("detection_two_ranks.py")


def _save_pair(family: str, folder: Path) -> list[str]:
    """Save a teacher and a student of `family`; the loss arguments of the run."""
    if family == "detr":
        tiny_detr(0, width=48).save_pretrained(folder / "teacher")
        tiny_detr(1).save_pretrained(folder / "student")
        return ["kd"]
    for role, network, seed in (("teacher", "fasterrcnn_resnet34_fpn", 0), ("student", "fasterrcnn_resnet18_fpn", 1)):
        torch.manual_seed(seed)
        model = torchvision_detector(network, id2label=dict(enumerate(NAMES)), pretrained=False, role=role,
                                     min_size=48, max_size=48, frozen_batch_norm=True)  # fmt: skip
        model.save_pretrained(folder / role)
    return ["dist", "mimic"]


@slow
@needs_launcher
@pytest.mark.parametrize("family", ["detr", "faster_rcnn"])
def test_detection_distillation_runs_on_two_processes(tmp_path, family):
    losses = _save_pair(family, tmp_path)
    (tmp_path / "out").mkdir()
    launch_two(str(SCRIPT), str(tmp_path / "out"), str(tmp_path / "teacher"), str(tmp_path / "student"), *losses)
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["task"] for r in ranks} == {"object-detection"}
    for name, value in ranks[0]["state"].items():
        assert torch.equal(torch.tensor(value), torch.tensor(ranks[1]["state"][name])), name
    before = AutoModelForObjectDetection.from_pretrained(tmp_path / "student").state_dict()
    assert any(not torch.equal(before[k], torch.tensor(v)) for k, v in ranks[0]["state"].items())
    for rank in ranks:
        assert rank["scored"] == [7, 7]  # the student's evaluation, then the teacher's: every image once
        assert 0.0 <= rank["metrics"]["eval_map"] <= 1.0 and 0.0 <= rank["metrics"]["teacher_eval_map"] <= 1.0
    assert ranks[0]["metrics"]["eval_map"] == ranks[1]["metrics"]["eval_map"]
