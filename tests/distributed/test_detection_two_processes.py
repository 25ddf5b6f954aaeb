"""DETR distillation over two CPU processes (gloo): it trains, both ranks end with the same student, and evaluation
scores each of the 7 evaluation images once (the ranks' per-image tables gathered, the last uneven batch included),
for the student and the teacher alike. (The update is not compared with one process's: DETR's loss and the matched
queries' terms average over each process's boxes and pairs.)"""

import json
from pathlib import Path

import torch
from transformers import DetrForObjectDetection

from ..detection.test_distill import tiny_detr
from ..testing_utils import slow
from .launch import launch_two, needs_launcher

SCRIPT = Path(__file__).with_name("detection_two_ranks.py")


@slow
@needs_launcher
def test_detr_distillation_runs_on_two_processes(tmp_path):
    tiny_detr(0, width=48).save_pretrained(tmp_path / "teacher")
    tiny_detr(1).save_pretrained(tmp_path / "student")
    (tmp_path / "out").mkdir()
    launch_two(str(SCRIPT), str(tmp_path / "out"), str(tmp_path / "teacher"), str(tmp_path / "student"))
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["task"] for r in ranks} == {"object-detection"}
    for name, value in ranks[0]["state"].items():
        assert torch.equal(torch.tensor(value), torch.tensor(ranks[1]["state"][name])), name
    before = DetrForObjectDetection.from_pretrained(tmp_path / "student").state_dict()
    assert any(not torch.equal(before[k], torch.tensor(v)) for k, v in ranks[0]["state"].items())
    for rank in ranks:
        assert rank["scored"] == [7, 7]  # the student's evaluation, then the teacher's: every image once
        assert 0.0 <= rank["metrics"]["eval_map"] <= 1.0 and 0.0 <= rank["metrics"]["teacher_eval_map"] <= 1.0
    assert ranks[0]["metrics"]["eval_map"] == ranks[1]["metrics"]["eval_map"]
