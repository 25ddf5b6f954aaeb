"""The `hfkd` command as a new user meets it: `hfkd --help` lists the commands, each command's page names it, a wrong
value is one line, a failure inside training keeps its traceback, and `hfkd distill` is the example script's run."""

import ast
import dataclasses
import inspect
import json
import runpy
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import load_file
from transformers import ViTImageProcessor

from hfkd.commands import cache, cli, distill
from hfkd.commands.arguments import DataArguments
from hfkd.training.arguments import DistillationArguments
from hfkd.training.trainer import DistillationTrainer
from hfkd.utils.errors import UsageError

from .testing_utils import perturbed, tiny_resnet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "run_image_distill.py"
sys.path.insert(0, str(REPO / "examples"))
import run_image_distill  # noqa: E402


def _python(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A fresh interpreter, offline, outside the checkout (the package comes from PYTHONPATH)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300, cwd="/")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("command")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for name in ("a", "b", "c"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(4):
                PILImage.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
                    root / "data" / split / name / f"{i}.png"
                )
    out = {"data": str(root / "data")}
    for name, wide in (("student", False), ("teacher", True)):
        model = perturbed(tiny_resnet(3, wide=wide, seed=1), seed=3) if wide else tiny_resnet(3, seed=1)
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def _run_argv(folders: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--student", folders["student"], "--teacher", folders["teacher"], "--loss", "kd", "--dataset",
            folders["data"], "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--report_to", "none", "--use_cpu", "--save_strategy", "no", "--disable_tqdm", "true", *extra]  # fmt: skip


def test_hfkd_help_lists_the_commands_without_loading_torch():
    code = "import sys\nfrom hfkd.commands import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit as e:\n" \
           "    print('exit', e.code, 'torch' in sys.modules)"  # fmt: skip
    run = _python("-c", code)
    assert run.stdout.startswith("usage: hfkd <command> [<args>]"), run.stderr
    for name in cli.COMMANDS:
        assert f"\n  {name} " in run.stdout
    assert run.stdout.rstrip().endswith("exit 0 False")  # the help of the command list imports no torch
    unknown = _python("-m", "hfkd", "distil", "--student", "x")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "hfkd: error: unknown command 'distil' (did you mean 'distill'?)" in unknown.stderr
    assert _python("-m", "hfkd").returncode == 2  # no command: the list, and a failing status


@pytest.mark.parametrize("name", ["distill", "cache", "convert", "report", "recipes-index"])
def test_each_command_names_itself(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: hfkd {name} ")


def test_hfkd_distill_help_is_the_scripts_page(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    command = capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_image_distill.main(["--help"])
    script = capsys.readouterr().out
    assert command.startswith("usage: hfkd distill --student MODEL")
    assert script.startswith("usage: run_image_distill.py --student MODEL")
    # The same flags, groups and help; only the program's name and how to launch it differ.
    assert command.split("\noptions:", 1)[1] == script.split("\noptions:", 1)[1]
    assert "accelerate launch -m hfkd distill --config recipes/" in command
    assert "accelerate launch examples/run_image_distill.py --config recipes/" in script


def test_a_wrong_value_is_one_line_and_fails(capsys, monkeypatch):
    monkeypatch.delenv("HFKD_TRACEBACK", raising=False)
    run = _python("-m", "hfkd", "distill", "--student", "x", "--output_dir", "o", "--drop_path_rate", "2")
    assert run.returncode == 1 and run.stderr.splitlines() == [
        "hfkd distill: error: --drop_path_rate must be in [0, 1) (Swin-T's recipe: 0.2), got 2.0.", cli.TRACEBACK_HINT
    ]  # fmt: skip
    # A check of TrainingArguments' own, when the arguments are built, is a wrong value too.
    argv = ["distill", "--student", "x", "--output_dir", "o", "--load_best_model_at_end", "--eval_strategy", "steps",
            "--save_strategy", "epoch"]  # fmt: skip
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith("hfkd distill: error: --load_best_model_at_end requires the save and eval strategy")
    assert "Traceback" not in error and error.endswith(f"\n{cli.TRACEBACK_HINT}\n")
    for command in ("distill", "cache"):  # a data folder that is not there, before anything is loaded or written
        missing = [command, "--teacher", "t", "--student", "s", "--dataset", "/nonexistent/data", "--output_dir", "o"]
        assert cli.main(missing if command == "distill" else [a for a in missing if a not in ("--student", "s")]) == 1
        assert f"hfkd {command}: error: --dataset '/nonexistent/data' does not exist." in capsys.readouterr().err
    monkeypatch.setenv("HFKD_TRACEBACK", "1")  # where it was raised, on request
    with pytest.raises(UsageError, match="--load_best_model_at_end requires") as raised:
        cli.main(argv)
    assert isinstance(raised.value.__cause__, ValueError)
    with pytest.raises(SystemExit) as exit_info:  # argparse's errors: one line too
        cli.main(["cache", "--output_dir", "o"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "hfkd cache: error: missing --teacher_model_name_or_path (or --teacher) and --dataset (or --dataset_name). "
        "(--help lists the flags.)\n"
    )


def test_an_error_inside_training_keeps_its_traceback(folders, tmp_path, monkeypatch):
    """Only a UsageError is shortened: a library bug in the middle of training, ValueError included, is not."""

    def broken(*args, **kwargs):
        raise ValueError("a library bug in compute_loss")

    monkeypatch.setattr(DistillationTrainer, "compute_loss", broken)
    with pytest.raises(ValueError, match="a library bug in compute_loss"):
        cli.main(["distill", *_run_argv(folders, tmp_path / "value")])

    code = ("import sys\nfrom hfkd.training.trainer import DistillationTrainer\n"
            "def broken(*args, **kwargs):\n    raise RuntimeError('out of memory, say')\n"
            "DistillationTrainer.compute_loss = broken\n"
            "from hfkd.commands.cli import main\nsys.exit(main())")  # fmt: skip
    run = _python("-c", code, "distill", *_run_argv(folders, tmp_path / "runtime"))
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "in broken" in run.stderr, run.stderr[-2000:]
    assert "RuntimeError: out of memory, say" in run.stderr and "hfkd distill: error" not in run.stderr


def _calls(function) -> list[str]:
    """The names a function calls, in the order its source calls them."""
    tree = ast.parse(inspect.getsource(function))
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return [call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "?") for call in calls]


def test_the_command_and_the_example_run_the_same_steps(folders, tmp_path):
    # Written the same, step for step: the example's main is the command's, with its own name.
    assert _calls(run_image_distill.main) == _calls(distill.main)
    assert "`hfkd distill` written out" in run_image_distill.__doc__
    # And they train the same student: the command in a fresh process, the script in this one.
    run = _python("-m", "hfkd", "distill", *_run_argv(folders, tmp_path / "command"), "--seed", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fresh process (OMP_NUM_THREADS=1): the same arithmetic
    try:
        metrics = run_image_distill.main(_run_argv(folders, tmp_path / "script", "--seed", "3"))
    finally:
        torch.set_num_threads(threads)
    command, script = tmp_path / "command", tmp_path / "script"
    written = ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "distill_config.json",
               "eval_results.json", "teacher_eval_results.json", "all_results.json")  # fmt: skip
    for name in written:
        assert (command / name).is_file() and (script / name).is_file(), name
    evaluated = json.loads((command / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_accuracy", "eval_top5_accuracy", "epoch"):
        assert evaluated[key] == metrics[key], key
    weights, reference = load_file(command / "model.safetensors"), load_file(script / "model.safetensors")
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)
    config, reference = (json.loads((d / "distill_config.json").read_text()) for d in (command, script))
    assert config == reference and config["distill_loss"] == "kd"
    assert "distill-kd" in (command / "README.md").read_text()


def test_the_data_builder_is_the_one_place_to_change_preprocessing(folders, tmp_path, monkeypatch):
    """A subclass that overrides `transform` changes what every model sees; the run is otherwise unchanged."""
    from hfkd.commands.data import ImageClassificationData

    seen = []

    class Flipped(ImageClassificationData):
        def transform(self, config, *, train, strong=False):
            pipeline = super().transform(config, train=train, strong=strong)
            seen.append((config.size, train))
            return lambda image: pipeline(image.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM))

    # The example's `data_builder(...)` step builds the task's builder: for classification this class.
    monkeypatch.setattr(distill, "ImageClassificationData", Flipped)
    metrics = run_image_distill.main(_run_argv(folders, tmp_path / "flipped", "--image_size", "12"))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert ((12, 12), True) in seen and ((16, 16), True) in seen and ((12, 12), False) in seen


def test_hfkd_cache_takes_the_runs_fields(folders, tmp_path, caplog):
    """One definition of each teacher and data flag: the cache's are the run's fields, default and help included."""
    shared = {DistillationArguments: cache.CacheTeacherArguments, DataArguments: cache.CacheDataArguments}
    for owner, taken in shared.items():
        hints, taken_hints = typing.get_type_hints(owner), typing.get_type_hints(taken)
        for item in dataclasses.fields(taken):
            original = owner.__dataclass_fields__[item.name]
            assert taken_hints[item.name] == hints[item.name], item.name
            assert item.metadata["help"] == original.metadata["help"], item.name
            if item.name not in ("teacher_model_name_or_path", "dataset"):  # required by the cache
                assert item.default == original.default, item.name
    assert cache.CacheTeacherArguments.__dataclass_fields__["teacher_ensemble_temperature"].default is None
    teacher, data, args = cache.parse_args(["--teacher", "a", "--teacher_revision", "v1", "--dataset", "d",
                                            "--output_dir", "o", "--top_k", "0"])  # fmt: skip
    assert teacher.teacher_model_name_or_path == ["a"] and teacher.teacher_model_revision == "v1"
    assert (data.dataset, args.top_k, args.epochs, args.seed) == ("d", 0, 1, 0)
    with pytest.raises(ValueError, match="--shard_size must be >= 1"):
        cache.parse_args(["--teacher", "a", "--dataset", "d", "--output_dir", "o", "--shard_size", "0"])

    # The command builds a cache on disk whose teacher record is the run's (a local folder by its name only).
    argv = ["cache", "--teacher", folders["teacher"], "--dataset", folders["data"], "--output_dir",
            str(tmp_path / "cache"), "--top_k", "2", "--shard_size", "5"]  # fmt: skip
    with caplog.at_level("INFO", logger="hfkd"):
        assert cli.main(argv) == 0
    config = json.loads((tmp_path / "cache" / "cache_config.json").read_text())
    assert config["teacher_info"]["name_or_path"] == "teacher" and config["teacher_info"]["local"] is True
    assert config["teacher_info"]["revision"] is None and config["top_k"] == 2 and config["num_samples"] == 12
    assert sorted(p.name for p in (tmp_path / "cache" / "epoch_0000").iterdir()) == [
        "shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]  # fmt: skip
    assert "built 3 of the 3 shards" in caplog.text


def test_a_run_from_an_ensemble_cache_says_when_its_temperature_is_not_the_losss(folders, tmp_path, caplog):
    argv = ["--teacher", folders["teacher"], "--teacher", folders["student"], "--dataset", folders["data"],
            "--top_k", "0", "--output_dir", str(tmp_path / "cache")]  # fmt: skip
    config = cache.main(argv)
    assert config.teacher_info["ensemble"]["temperature"] == 1.0  # unset: 1, a cache having no loss
    run = ["--student", folders["student"], "--loss", "kd", "--dataset", folders["data"], "--teacher_cache_dir",
           str(tmp_path / "cache"), "--max_steps", "1", "--report_to", "none", "--use_cpu", "--save_strategy", "no",
           "--evaluate_teacher", "false", "--disable_tqdm", "true"]  # fmt: skip
    with caplog.at_level("WARNING", logger="hfkd"):
        run_image_distill.main([*run, "--output_dir", str(tmp_path / "kd")])  # KD: temperature 4
    assert "averaged its teachers' distributions at temperature 1 and this run's loss works at 4" in caplog.text
    assert "--teacher_ensemble_temperature 4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hfkd"):
        run_image_distill.main([*run, "--output_dir", str(tmp_path / "kd1"), "--loss_kwargs", '{"temperature": 1}'])
    assert "averaged its teachers' distributions" not in caplog.text


@pytest.mark.parametrize("module", ["hfkd.teacher_cache", "hfkd.convert", "hfkd.report", "hfkd.recipes_index"])
def test_the_module_aliases_still_answer(module, capsys, monkeypatch):
    """`python -m hfkd.<module>` runs its command, under the command's name and error rule."""
    prog = {"hfkd.teacher_cache": "hfkd cache", "hfkd.recipes_index": "hfkd recipes-index"}.get(module)
    prog = prog or module.replace(".", " ")
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__")
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {prog} ")
    if module == "hfkd.teacher_cache":
        argv = [module, "--teacher", "a", "--dataset", "d", "--output_dir", "o", "--epochs", "0"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module(module, run_name="__main__")
        assert exit_info.value.code == 1
        assert capsys.readouterr().err.startswith("hfkd cache: error: --epochs must be >= 1, got 0.")
