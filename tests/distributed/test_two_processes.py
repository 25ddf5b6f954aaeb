"""Two CPU processes through Accelerate (gloo): both ranks train, and the updates (and the student's EMA) equal one
process with the whole batch, though only one rank has a labelled sample at each step (the CE averages over the
labelled samples of all processes). `accelerate launch --cpu --num_processes 2` would start a single process without
MPI; the form that starts two on CPU is `accelerate launch --multi_gpu --num_processes 2 <script> ... --use_cpu`, where
`--use_cpu` is the script's TrainingArguments flag (here set in two_ranks.py)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

from hfkd import DistillationArguments, DistillationTrainer

from ..testing_utils import perturbed, slow, tiny_resnet, tiny_vit
from .launch import launch_two, needs_launcher
from .two_ranks import LABELS, collate

SCRIPT = Path(__file__).with_name("two_ranks.py")


@slow
@needs_launcher
def test_two_ranks_train_and_match_one_process(tmp_path):
    teacher = perturbed(tiny_resnet(4, wide=True, seed=2), seed=5, scale=0.5)
    teacher.save_pretrained(tmp_path / "teacher")
    student = tiny_vit(4, seed=1)  # LayerNorm only, no dropout: the per-sample loss decomposes over ranks
    student.save_pretrained(tmp_path / "student")

    launch_two(str(SCRIPT), str(tmp_path / "out"), str(tmp_path / "teacher"), str(tmp_path / "student"))

    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    # At each step each rank trained on its own half of the batch.
    assert all(len(r["labels_seen"]) == 2 and all(len(b) == 2 for b in r["labels_seen"]) for r in ranks)
    for step in (0, 1):
        assert sorted(ranks[0]["labels_seen"][step] + ranks[1]["labels_seen"][step]) == sorted(LABELS)
    # distill/* metrics are the mean over processes, identical on both ranks.
    assert ranks[0]["logged"][0]["distill/kd"] == pytest.approx(ranks[1]["logged"][0]["distill/kd"])
    # Only the main process writes the card and distill_config.json (one writer, both present).
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out" / "distill_config.json").is_file()

    # One process, batch 4: the same update.
    reference = tiny_vit(4, seed=1)
    args = DistillationArguments(
        output_dir=str(tmp_path / "single"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
        max_steps=2, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", distill_loss="kd",
        distill_ce_weight=0.3, distill_weight=0.7, save_strategy="no", disable_tqdm=True, seed=0,
        distill_ema=True, distill_ema_decay=0.5,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    from datasets import Dataset

    data = Dataset.from_dict(
        {"pixel_values": torch.randn(4, 3, 32, 32, generator=g).numpy(), "labels": LABELS}
    ).with_format("torch")
    single = DistillationTrainer(
        model=reference, teacher_model=teacher, args=args, train_dataset=data, data_collator=collate
    )
    single.train()
    initial = tiny_vit(4, seed=1).state_dict()
    ema = single.ema.state_dict()
    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "out").state_dict()
    changed = changed_ema = False
    for name, value in reference.state_dict().items():
        for rank in ranks:
            torch.testing.assert_close(torch.tensor(rank["state"][name]), value, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(torch.tensor(rank["ema"][name]), ema[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saved[name], ema[name], rtol=1e-5, atol=1e-6)  # the run's result is the average
        changed |= not torch.equal(initial[name], value)
        changed_ema |= not torch.allclose(ema[name], value)  # after 2 steps at decay 0.5, average != live weights
    assert changed and changed_ema
