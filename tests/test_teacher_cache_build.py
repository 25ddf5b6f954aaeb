"""Building a teacher cache as a user on a cluster expects: a killed build resumes where it stopped and gives the
same bytes, training reads only the rows it asks for, and an ensemble of teachers can be cached."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import ViTImageProcessor

from hfkd.commands import cache as teacher_cache
from hfkd.teachers.cache import build as cache_build
from hfkd.teachers.cache.build import CacheTeacher, build_teacher_cache
from hfkd.teachers.cache.check import cache_summary, check_cache_matches
from hfkd.teachers.cache.store import TeacherCache, logits_from_topk
from hfkd.utils.hashing import weights_sha256

from .testing_utils import perturbed, slow, tiny_resnet

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "distributed" / "cache_fault_runner.py"
A = dict(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
B = dict(size=(24, 24), mean=(0.4, 0.45, 0.5), std=(0.3, 0.2, 0.25))


def _teacher(seed: int = 2, num_labels: int = 5):
    return perturbed(tiny_resnet(num_labels, wide=True, seed=seed).eval(), seed=seed + 5)


def _images(count: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8) for _ in range(count)]


def _build(folder: Path, teacher, **kwargs) -> Path:
    options = dict(epochs=2, top_k=None, seed=4, batch_size=4, shard_size=4, progress=False)
    if isinstance(teacher, torch.nn.Module):
        options.update(teacher_name="a", **A)
    build_teacher_cache(teacher, _images(), str(folder), **{**options, **kwargs})
    return folder


def _logits(folder: Path) -> torch.Tensor:
    cache = TeacherCache(str(folder))
    return torch.stack([cache.teacher_logits(epoch, torch.arange(6)) for epoch in range(2)])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- resuming


def _saved_teacher(folder: Path, seed: int = 2, num_labels: int = 5) -> str:
    _teacher(seed, num_labels).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return str(folder)


@slow
def test_a_killed_build_resumes_where_it_stopped_and_equals_an_uninterrupted_one(tmp_path, monkeypatch, one_thread):
    teacher = _saved_teacher(tmp_path / "teacher")

    def argv(out: Path, top_k: str = "3") -> list[str]:
        return ["--teacher", teacher, "--dataset", "digits", "--max_train_samples", "10", "--shard_size", "4",
                "--epochs", "2", "--top_k", top_k, "--batch_size", "3", "--output_dir", str(out)]  # fmt: skip

    teacher_cache.main(argv(tmp_path / "reference"))
    out = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "HFKD_TEST_KILL_AT_SHARD": "4"}  # fmt: skip
    killed = subprocess.run([sys.executable, str(RUNNER), *argv(out)], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    # 3 shards per epoch (4 + 4 + 2 samples): the first epoch and one shard of the second were written.
    written = [p.relative_to(out).parts for p in sorted(out.glob("epoch_*/shard_*.safetensors"))]
    assert written == [("epoch_0000", f"shard_0000{s}.safetensors") for s in range(3)] + [
        ("epoch_0001", "shard_00000.safetensors")
    ]
    assert len(list(out.glob("epoch_0001/*.tmp-*"))) == 1 and not (out / "cache_config.json").exists()

    before = _files(out)
    with pytest.raises(ValueError, match=r"interrupted cache build with other settings \(top_k\)"):
        teacher_cache.main(argv(out, top_k="2"))
    assert _files(out) == before

    corrupt = out / "epoch_0000" / "shard_00001.safetensors"  # one flipped byte in its tensors
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    truncated = out / "epoch_0000" / "shard_00002.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    kept = [out / "epoch_0000" / "shard_00000.safetensors", out / "epoch_0001" / "shard_00000.safetensors"]
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in kept]

    built = []
    build_shard = cache_build._shard_tensors
    monkeypatch.setattr(cache_build, "_shard_tensors", lambda *a: built.append(a[4:6]) or build_shard(*a))
    teacher_cache.main(argv(out))
    assert sorted(built) == [(0, 1), (0, 2), (1, 1), (1, 2)]  # the kept shards were verified, not recomputed
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in kept] == stamps
    reference = _files(tmp_path / "reference")
    assert set(_files(out)) == set(reference)  # no temporary file nor build plan left
    assert _files(out) == reference


# ---------------------------------------------------------------------------------------------- reading


def _record_reads(monkeypatch) -> list[tuple[str, int, int]]:
    """Spy on the files opened and the bytes read: (path, offset, length) of every positioned read."""
    paths, reads = {}, []
    os_open, os_pread = os.open, os.pread

    def spy_open(path, *args, **kwargs):
        fd = os_open(path, *args, **kwargs)
        paths[fd] = str(path)
        return fd

    def spy_pread(fd, length, offset):
        reads.append((paths.get(fd, "?"), offset, length))
        return os_pread(fd, length, offset)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "pread", spy_pread)
    return reads


def _rows_read(cache: TeacherCache, reads: list[tuple[str, int, int]]) -> list[tuple[int, str, int]]:
    """The (sample, tensor, epoch) rows the reads covered, one entry per row read; every read must be whole rows of
    one tensor."""
    rows = []
    for path, offset, length in reads:
        epoch, shard = (int(part.split("_")[1].split(".")[0]) for part in Path(path).parts[-2:])
        tensors = cache._layout[(epoch, shard)].items()
        for name, (dtype, shape, start) in tensors:
            row_bytes = {"F32": 4, "I32": 4, "U8": 1}[dtype] * int(np.prod(shape[1:]))
            if start <= offset < start + row_bytes * shape[0]:
                assert (offset - start) % row_bytes == 0 and length % row_bytes == 0 and length > 0
                assert offset + length <= start + row_bytes * shape[0], (path, offset, length)
                first = (offset - start) // row_bytes + shard * cache.config.shard_size
                rows += [(first + i, name, epoch) for i in range(length // row_bytes)]
                break
        else:
            raise AssertionError(f"read of {length} bytes at {offset} of {path}: no tensor's rows")
    return rows


@pytest.mark.skipif(not hasattr(os, "pread"), reason="the spy watches os.pread")
def test_teacher_logits_read_only_the_rows_asked_for(tmp_path, monkeypatch):
    build_teacher_cache(_teacher(), _images(12), str(tmp_path / "cache"), teacher_name="a", epochs=2, top_k=3,
                        shard_size=4, progress=False, **A)  # fmt: skip
    folder = tmp_path / "cache"
    cache = TeacherCache(str(folder))
    reads = _record_reads(monkeypatch)
    indices = torch.tensor([7, 2, 3, 11, 2])
    logits = cache.teacher_logits(1, indices)
    expected = []
    for index in indices.tolist():
        shard = load_file(folder / "epoch_0001" / f"shard_0000{index // 4}.safetensors")
        top_indices, top_probs = shard["topk_indices"][index % 4], shard["topk_probs"][index % 4]
        expected.append(logits_from_topk(top_indices, top_probs, 5))
    torch.testing.assert_close(logits, torch.stack(expected), rtol=0, atol=0)
    # Each wanted row once, of the two tensors the logits need, from epoch 1 only; nothing else.
    rows = _rows_read(cache, reads)
    assert sorted(rows) == sorted((i, name, 1) for i in (2, 3, 7, 11) for name in ("topk_indices", "topk_probs"))
    assert sum(length for _, _, length in reads) == 4 * 2 * 3 * 4

    # Under N processes each process's sampler gives it its own indices: it reads those rows and no others.
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    for rank in range(2):
        reads.clear()
        mine = order[rank::2][:4]
        TeacherCache(str(folder)).teacher_logits(0, mine)
        assert sorted(_rows_read(cache, reads)) == sorted(
            (i, name, 0) for i in mine.tolist() for name in ("topk_indices", "topk_probs")
        )
    reads.clear()
    box, flip = cache.view(1, 5)
    shard = load_file(folder / "epoch_0001" / "shard_00001.safetensors")
    assert (list(box), flip) == (shard["crops"][1].tolist(), bool(shard["flips"][1]))
    assert sorted(_rows_read(cache, reads)) == [(5, "crops", 1), (5, "flips", 1)]


# ---------------------------------------------------------------------------------------------- ensembles


def _member(teacher, name: str, settings: dict) -> CacheTeacher:
    return CacheTeacher(teacher, name, **settings, info={"local": True})


@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_an_ensemble_of_two_copies_holds_the_teachers_logits(tmp_path, mode):
    teacher = _teacher()
    single = _logits(_build(tmp_path / "single", teacher))
    both = [_member(teacher, "a", A), _member(_teacher(), "a2", A)]
    ensemble = _logits(_build(tmp_path / "ensemble", both, ensemble=mode, ensemble_temperature=2.0))
    if mode == "logits":
        torch.testing.assert_close(ensemble, single)
    else:  # the averaged distribution: the same logits up to a constant per row
        torch.testing.assert_close(ensemble.log_softmax(-1), single.log_softmax(-1))


@pytest.mark.parametrize("weights", [[1, 0], [0, 1]])
def test_weights_one_and_zero_give_one_teachers_cache_with_its_own_preprocessing(tmp_path, weights):
    first, second = _teacher(2), _teacher(3)
    members = [_member(first, "a", A), _member(second, "b", B)]
    ensemble = _logits(_build(tmp_path / "ensemble", members, teacher_weights=weights))
    chosen, settings = (first, A) if weights[0] else (second, B)
    single = _logits(_build(tmp_path / "single", chosen, **settings))
    torch.testing.assert_close(ensemble.log_softmax(-1), single.log_softmax(-1))
    other = _logits(_build(tmp_path / "other", chosen, **(B if weights[0] else A)))
    assert not torch.allclose(ensemble.log_softmax(-1), other.log_softmax(-1), atol=1e-4)


def test_teachers_of_other_label_spaces_are_refused_before_any_runs(tmp_path):
    first, four, named = _teacher(), _teacher(4, num_labels=4), _teacher(3)
    first.config.id2label = {i: name for i, name in enumerate("abcde")}
    named.config.id2label = {i: name for i, name in enumerate("abcdx")}
    calls = []
    for model in (first, four, named):
        model.register_forward_pre_hook(lambda *a: calls.append(1))
    cases = {
        r"Teacher 'other' predicts 4 classes and teacher 'first' 5": four,
        r"Teachers 'first' and 'other' name class 4 differently \('e' vs 'x'\)": named,
    }
    for message, other in cases.items():
        with pytest.raises(ValueError, match=message):
            _build(tmp_path / "cache", [_member(first, "first", A), _member(other, "other", B)])
        assert not (tmp_path / "cache").exists() and calls == []  # refused before any teacher ran or file was written
    placeholders = _teacher(3)  # LABEL_0 ... carry no names: only the count must agree
    _build(tmp_path / "ok", [_member(first, "first", A), _member(placeholders, "plain", B)], epochs=1)


def test_an_ensemble_cache_records_its_members_and_is_checked_against_the_run(tmp_path):
    first, second = _teacher(2), _teacher(3)
    members = [_member(first, "/models/a", A), _member(second, "hub/b", B)]
    folder = _build(tmp_path / "cache", members, teacher_weights=[7, 3], ensemble_temperature=2.0)
    raw = json.loads((folder / "cache_config.json").read_text())
    assert raw["teacher"] == "a + hub/b" and raw["size"] == [32, 32]
    assert raw["teacher_info"]["ensemble"] == {"mode": "probs", "weights": [0.7, 0.3], "temperature": 2.0}
    recorded = raw["teacher_info"]["members"]
    assert [m["name_or_path"] for m in recorded] == ["a", "hub/b"]
    assert [m["weights_sha256"] for m in recorded] == [weights_sha256(first), weights_sha256(second)]
    assert [m["size"] for m in recorded] == [[32, 32], [24, 24]] and recorded[1]["mean"] == [0.4, 0.45, 0.5]
    config = TeacherCache(str(folder)).config
    assert "an ensemble of 2 teachers (probs average, weights 0.7/0.3, temperature 2)" in cache_summary(config)

    def check(**run):
        check_cache_matches(config, dataset="d", dataset_config=None, train_split="train", max_train_samples=None,
                            train=[None] * 6, image_column="image", label_column=None, **run)  # fmt: skip

    check(teacher=["/elsewhere/a", "hub/b"], teacher_weights=[0.7, 0.3], teacher_ensemble="probs")
    check(teacher=None)
    refused = {
        r"teacher=\['a', 'hub/b'\], this run has \['hub/b', 'a'\]": {"teacher": ["hub/b", "/x/a"]},
        r"teacher=\['a', 'hub/b'\], this run has 'a'": {"teacher": "/x/a"},
        r"teacher_weights=\[0.7, 0.3\], this run has \[0.5, 0.5\]": {"teacher_weights": [1, 1]},
        "teacher_ensemble='probs', this run has 'logits'": {"teacher_ensemble": "logits"},
        "teacher_ensemble_temperature=2.0, this run has 4.0": {"teacher_ensemble_temperature": 4},
    }
    for message, run in refused.items():
        with pytest.raises(ValueError, match=message):
            check(**run)


def test_a_single_teacher_cache_keeps_its_fields(tmp_path):
    info = {"name_or_path": "a", "local": True, "revision": None, "commit": None}
    folder = _build(tmp_path / "cache", _teacher(), teacher_info=info)
    raw = json.loads((folder / "cache_config.json").read_text())
    assert sorted(raw) == ["data", "epochs", "format", "mean", "num_channels", "num_classes", "num_samples", "seed",
                           "shard_size", "size", "std", "teacher", "teacher_info", "top_k"]  # fmt: skip
    assert sorted(raw["teacher_info"]) == ["commit", "local", "name_or_path", "revision", "weights_sha256"]
    config = TeacherCache(str(folder)).config
    assert "ensemble" not in cache_summary(config)
    for teacher in ("/models/a", ["/models/a"]):
        check_cache_matches(config, dataset="d", dataset_config=None, train_split="train", max_train_samples=None,
                            train=[None] * 6, image_column="image", label_column=None, teacher=teacher)  # fmt: skip
    with pytest.raises(ValueError, match=r"teacher='a', this run has \['a', 'b'\]"):
        check_cache_matches(config, dataset="d", dataset_config=None, train_split="train", max_train_samples=None,
                            train=[None] * 6, image_column="image", label_column=None, teacher=["a", "b"])  # fmt: skip


def test_the_command_builds_an_ensemble_cache(tmp_path):
    def teachers(*argv: str) -> list[str]:
        return teacher_cache.parse_args([*argv, "--dataset", "d", "--output_dir", "o"])[0].teacher_model_name_or_path

    assert teachers("--teacher", "a", "--teacher", "b") == ["a", "b"]
    assert teachers("--teacher", "a", "b", "--teacher_weights", "0.7", "0.3") == ["a", "b"]
    first = _saved_teacher(tmp_path / "first", seed=2)
    second = tmp_path / "second"
    _teacher(3).save_pretrained(second)
    ViTImageProcessor(size={"height": 12, "width": 12}, image_mean=[0.4] * 3).save_pretrained(second)
    other = _saved_teacher(tmp_path / "four", seed=4, num_labels=4)
    argv = ["--dataset", "digits", "--max_train_samples", "6", "--shard_size", "4", "--top_k", "2"]
    with pytest.raises(ValueError, match="predicts 4 classes"):
        teacher_cache.main(["--teacher", first, other, *argv, "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="one weight per --teacher"):
        teacher_cache.main(["--teacher", first, str(second), "--teacher_weights", "1", *argv, "--output_dir", "x"])

    ensemble = ["--teacher", first, "--teacher", str(second), "--teacher_weights", "2", "1", "--teacher_ensemble",
                "logits"]  # fmt: skip
    config = teacher_cache.main([*ensemble, *argv, "--output_dir", str(tmp_path / "cache")])
    members = config.teacher_info["members"]
    assert config.teacher == "first + second" and [m["size"] for m in members] == [[16, 16], [12, 12]]
    assert members[1]["mean"] == [0.4] * 3 and all(m["local"] and m["revision"] is None for m in members)
    assert config.teacher_info["ensemble"] == {"mode": "logits", "weights": [2 / 3, 1 / 3], "temperature": None}
    assert TeacherCache(str(tmp_path / "cache")).teacher_logits(0, torch.arange(6)).shape == (6, 5)
