"""`accelerate launch -m hfkd.teacher_cache` over two CPU processes (gloo): each builds its share of the shards, and
the folder equals a one-process build byte for byte. On CPU the processes form one group only with the command's
`--use_cpu` (`accelerate launch --cpu` would start a single process)."""

import re
from pathlib import Path

import torch
from transformers import ViTImageProcessor

from hfkd.commands import cache as teacher_cache

from ..testing_utils import perturbed, slow, tiny_resnet
from .launch import launch_two, needs_launcher


@slow
@needs_launcher
def test_two_processes_build_the_cache_one_process_builds(tmp_path):
    teacher = perturbed(tiny_resnet(5, wide=True, seed=2), seed=7)
    teacher.save_pretrained(tmp_path / "teacher")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path / "teacher")
    # 10 samples in shards of 4: 3 shards per epoch (the last one short), 6 in all.
    args = ["--teacher", str(tmp_path / "teacher"), "--dataset", "digits", "--max_train_samples", "10",
            "--shard_size", "4", "--epochs", "2", "--top_k", "3", "--batch_size", "3"]  # fmt: skip

    result = launch_two("-m", "hfkd.teacher_cache", *args, "--use_cpu", "--output_dir", str(tmp_path / "two"))
    shares = re.findall(r"process (\d) of (\d): built (\d) of the (\d) shards", result.stderr)
    assert sorted(shares) == [("0", "2", "3", "6"), ("1", "2", "3", "6")], result.stderr[-3000:]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): the same arithmetic, to the bit
    try:
        teacher_cache.main([*args, "--output_dir", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 2 + 6 and set(two) == set(one)  # cache_config.json, selection.safetensors and the shards
    assert [name for name in one if one[name] != two[name]] == []
