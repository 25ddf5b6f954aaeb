"""Per-pixel distillation over two CPU processes (gloo): KD and CWD give the update of one process with the whole
batch (DIST's intra-class term correlates the pixels of each process's batch, as the reference's does, so it is
left out of this comparison)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ..testing_utils import slow
from .launch import launch_two, needs_launcher
from .segmentation_two_ranks import run

SCRIPT = Path(__file__).with_name("segmentation_two_ranks.py")


def _segformer(hidden, seed):
    torch.manual_seed(seed)
    config = SegformerConfig(
        depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=hidden, num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=16, num_labels=5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0, drop_path_rate=0.0,
    )  # fmt: skip
    return SegformerForSemanticSegmentation(config)


@slow
@needs_launcher
@pytest.mark.parametrize("loss", ["kd", "cwd"])
def test_two_ranks_give_the_update_of_the_whole_batch(tmp_path, loss):
    _segformer([16, 16, 32, 32], seed=0).save_pretrained(tmp_path / "teacher")
    _segformer([8, 8, 16, 16], seed=1).save_pretrained(tmp_path / "student")
    folders = [str(tmp_path / "out"), str(tmp_path / "teacher"), str(tmp_path / "student")]
    launch_two(str(SCRIPT), *folders, loss, "2")
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and {r["task"] for r in ranks} == {"semantic-segmentation"}
    single = run(str(tmp_path / "single"), folders[1], folders[2], loss, 4).student.state_dict()
    for name, value in single.items():
        for rank in ranks:
            torch.testing.assert_close(torch.tensor(rank["state"][name]), value, rtol=1e-4, atol=1e-5, msg=name)
    before = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "student").state_dict()
    assert any(not torch.equal(before[name], single[name]) for name in single)
