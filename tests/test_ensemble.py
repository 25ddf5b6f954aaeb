"""Teacher ensembles: the combination rule against the formula, two copies of one teacher against that teacher,
weights as documented, label spaces checked before training, features from one named teacher, each teacher with its
own pixels, and the card and distill_config.json naming every teacher."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from transformers import ViTImageProcessor

from hfkd import DistillationArguments, DistillationTrainer
from hfkd.commands import distill
from hfkd.commands.arguments import parse_args
from hfkd.teachers.combine import ensemble_logits
from hfkd.teachers.ensemble import EnsembleTeacher

from .testing_utils import collate, synthetic_dataset, tiny_resnet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import run_image_distill  # noqa: E402


def _logits(seed: int, shape=(6, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_probs_mode_is_the_weighted_mean_of_softened_distributions(temperature):
    z = [_logits(0), _logits(1), _logits(2)]
    weights = [2.0, 1.0, 1.0]
    combined = ensemble_logits(z, weights, mode="probs", temperature=temperature)
    # From the definition: sum_i w_i softmax(z_i / T), with the weights normalised.
    expected = sum(w / 4.0 * (t / temperature).softmax(-1) for w, t in zip(weights, z))
    torch.testing.assert_close((combined / temperature).softmax(-1), expected, rtol=1e-6, atol=1e-7)


def test_logits_mode_is_the_weighted_mean_of_logits_and_weights_are_normalised():
    z = [_logits(0), _logits(1)]
    torch.testing.assert_close(ensemble_logits(z, [3, 1], mode="logits"), 0.75 * z[0] + 0.25 * z[1])
    torch.testing.assert_close(ensemble_logits(z, [3, 1]), ensemble_logits(z, [0.75, 0.25]))
    assert torch.equal(ensemble_logits([z[0], z[0]], mode="logits"), z[0])  # two copies: the same logits exactly


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "1 value\\(s\\) for 2 teacher"), ([1.0, -1.0], ">= 0"), ([0.0, 0.0], "not all 0")],
)
def test_wrong_weights_are_named(weights, message):
    with pytest.raises(ValueError, match=message):
        ensemble_logits([_logits(0), _logits(1)], weights)
    with pytest.raises(ValueError, match="share one label space"):
        ensemble_logits([_logits(0), _logits(1, (6, 4))])


def _args(tmp_path, **kwargs) -> DistillationArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
        max_steps=2, learning_rate=0.1, optim="sgd", max_grad_norm=0.0, save_strategy="no", seed=0,
        disable_tqdm=True, lr_scheduler_type="constant", distill_loss="kd",
    )  # fmt: skip
    defaults.update(kwargs)
    return DistillationArguments(**defaults)


def _trained(tmp_path, teacher_model, **kwargs) -> dict[str, torch.Tensor]:
    student = tiny_resnet(seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher_model, args=_args(tmp_path, **kwargs),
        train_dataset=synthetic_dataset(8), data_collator=collate,
    )  # fmt: skip
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


@pytest.mark.parametrize("mode", ["probs", "logits"])
def test_two_copies_of_one_teacher_train_as_that_teacher(tmp_path, mode):
    teacher = tiny_resnet(wide=True, seed=2)
    single = _trained(tmp_path / "one", teacher)
    pair = _trained(tmp_path / "two", [teacher, copy.deepcopy(teacher)], teacher_ensemble=mode)
    for key, value in single.items():
        torch.testing.assert_close(pair[key], value, rtol=1e-5, atol=1e-6)
    # A weight of 0 silences a teacher: [1, 0] is the first teacher alone.
    other = tiny_resnet(wide=True, seed=7)
    first = _trained(tmp_path / "w", [teacher, other], teacher_weights=[1.0, 0.0], teacher_ensemble=mode)
    for key, value in single.items():
        torch.testing.assert_close(first[key], value, rtol=1e-5, atol=1e-6)


def test_the_loss_sees_the_average_distribution_at_its_temperature(tmp_path):
    a, b = tiny_resnet(wide=True, seed=2), tiny_resnet(wide=True, seed=3)
    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=[a, b], args=_args(tmp_path, teacher_weights=[1, 3]),
        train_dataset=synthetic_dataset(8), data_collator=collate,
    )  # fmt: skip
    assert isinstance(trainer.teacher, EnsembleTeacher) and trainer.teacher.temperature == 4.0  # KD's temperature
    batch = collate([synthetic_dataset(8)[i] for i in range(4)])
    combined = trainer.teacher.logits(batch)
    with torch.no_grad():
        expected = 0.25 * (a(**batch).logits / 4).softmax(-1) + 0.75 * (b(**batch).logits / 4).softmax(-1)
    torch.testing.assert_close((combined / 4).softmax(-1), expected, rtol=1e-5, atol=1e-6)
    record = trainer.distill_config()["teacher"]
    assert record["ensemble"] == {"mode": "probs", "weights": [0.25, 0.75], "temperature": 4.0,
                                  "feature_teacher": record["members"][0]["name_or_path"]}  # fmt: skip
    assert len(record["members"]) == 2


def test_each_teacher_keeps_its_own_dtype(tmp_path):
    a, b = tiny_resnet(wide=True, seed=2), tiny_resnet(wide=True, seed=3).to(torch.bfloat16)
    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=[a, b], args=_args(tmp_path), train_dataset=synthetic_dataset(8),
        data_collator=collate,
    )  # fmt: skip
    assert [next(m.model.parameters()).dtype for m in trainer.teacher.members] == [torch.float32, torch.bfloat16]
    batch = collate([synthetic_dataset(8)[i] for i in range(4)])
    with torch.no_grad():
        expected = b(pixel_values=batch["pixel_values"].bfloat16()).logits
    assert torch.equal(trainer.teacher.member_logits(batch)[1], expected)
    trainer.train()


@pytest.mark.parametrize("collator", ["default", "given"])
def test_each_teacher_gets_its_own_pixels_when_unused_columns_are_removed(tmp_path, collator):
    """`remove_unused_columns=True` keeps every teacher's pixels (`teacher_pixel_values_<i>`), which no forward names,
    with the default collator and with one of the user's (the Trainer then drops columns itself)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    keys = ("pixel_values", "teacher_pixel_values", "teacher_pixel_values_1")
    columns = {key: torch.randn(4, 3, 32, 32, generator=g).numpy() for key in keys}
    data = Dataset.from_dict({**columns, "labels": [0, 1, 2, 3], "file": ["a", "b", "c", "d"]})
    a, b = tiny_resnet(wide=True, seed=2), tiny_resnet(wide=True, seed=3)
    seen = {}
    for name, member in (("teacher_pixel_values", a), ("teacher_pixel_values_1", b)):
        member.register_forward_pre_hook(
            lambda m, _, kw, name=name: seen.update({name: kw["pixel_values"]}), with_kwargs=True
        )

    def given(examples):
        return {key: torch.stack([torch.as_tensor(e[key]) for e in examples]) for key in (*keys, "labels")}

    trainer = DistillationTrainer(
        model=tiny_resnet(seed=1), teacher_model=[a, b], args=_args(tmp_path, remove_unused_columns=True,
        per_device_train_batch_size=4, max_steps=1), train_dataset=data,
        data_collator=given if collator == "given" else None,
    )  # fmt: skip
    trainer.train()
    for key in ("teacher_pixel_values", "teacher_pixel_values_1"):
        order = [int(np.flatnonzero((columns[key] == row.numpy()).all(axis=(1, 2, 3)))[0]) for row in seen[key]]
        torch.testing.assert_close(seen[key], torch.as_tensor(columns[key][order]))


def test_teachers_of_other_label_spaces_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="predicts 4 classes and teacher"):
        DistillationTrainer(
            model=tiny_resnet(seed=1), teacher_model=[tiny_resnet(wide=True), tiny_resnet(4, wide=True)],
            args=_args(tmp_path), train_dataset=synthetic_dataset(8), data_collator=collate,
        )  # fmt: skip
    named = tiny_resnet(wide=True, seed=3)
    named.config.id2label = {i: name for i, name in enumerate("abcde")}
    renamed = tiny_resnet(wide=True, seed=4)
    renamed.config.id2label = {i: name for i, name in enumerate("abdce")}
    with pytest.raises(ValueError, match="name class 2 differently \\('c' vs 'd'\\)"):
        DistillationTrainer(
            model=tiny_resnet(seed=1), teacher_model=[named, renamed], args=_args(tmp_path),
            train_dataset=synthetic_dataset(8), data_collator=collate,
        )  # fmt: skip


def test_feature_losses_take_the_named_teachers_features(tmp_path, caplog):
    small, wide = tiny_resnet(seed=3), tiny_resnet(wide=True, seed=2)
    for wanted, expected in ((None, small), ("1", wide)):
        with caplog.at_level("INFO", logger="hfkd"):
            trainer = DistillationTrainer(
                model=tiny_resnet(seed=1), teacher_model=[small, wide],
                args=_args(tmp_path, distill_loss="fitnet", teacher_features_from=wanted),
                train_dataset=synthetic_dataset(8), data_collator=collate,
            )  # fmt: skip
        assert trainer.teacher.model is expected and trainer.teacher_model is expected
        assert trainer.teacher.members[1 - trainer.teacher.feature_member].needs.hidden_states is False
        trainer.train()
    assert "the feature maps come from teacher" in caplog.text
    with pytest.raises(ValueError, match="--teacher_features_from 'c' is none of the teachers"):
        _args(tmp_path, teacher_model_name_or_path=["a", "b"], teacher_features_from="c")


def test_ensemble_flags_parse_and_refuse_what_cannot_work():
    argv = ["--student", "s", "--output_dir", "o"]
    args = parse_args([*argv, "--teacher", "a", "--teacher", "b", "--teacher_weights", "2", "1"])[3]
    assert args.teacher_model_name_or_path == ["a", "b"] and args.teacher_weights == [2.0, 1.0]
    assert parse_args([*argv, "--teacher", "a", "b", "c"])[3].teacher_names == ["a", "b", "c"]
    assert parse_args([*argv, "--teacher", "a"])[3].teacher_model_name_or_path == "a"
    with pytest.raises(ValueError, match="2 value\\(s\\) for 3 teacher"):
        parse_args([*argv, "--teacher", "a", "b", "c", "--teacher_weights", "1", "1"])
    with pytest.raises(ValueError, match="weighs the teachers of an ensemble"):
        parse_args([*argv, "--teacher", "a", "--teacher_weights", "1"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ensemble")
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for name in ("a", "b", "c"):
            (root / "data" / split / name).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                PILImage.fromarray(pixels).save(root / "data" / split / name / f"{i}.png")
    out = {"data": str(root / "data")}
    for name, labels, wide, size in (("student", 3, False, 16), ("t16", 3, True, 16), ("t24", 3, True, 24),
                                     ("t7", 7, True, 16)):  # fmt: skip
        tiny_resnet(labels, wide=wide, seed=len(name)).save_pretrained(root / name)
        ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def test_the_script_distils_from_an_ensemble_and_reports_every_teacher(folders, tmp_path, caplog):
    out = tmp_path / "run"
    argv = ["--dataset", folders["data"], "--output_dir", str(out), "--max_steps", "2", "--report_to", "none",
            "--use_cpu", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--student",
            folders["student"], "--loss", "kd", "--teacher", folders["t16"], "--teacher", folders["t24"],
            "--teacher_weights", "1", "3"]  # fmt: skip
    seen = []
    original = DistillationTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append({k: tuple(v.shape) for k, v in inputs.items() if "pixel" in k})
        return original(self, model, inputs, *args, **kwargs)

    with caplog.at_level("INFO", logger="hfkd"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(DistillationTrainer, "compute_loss", spy)
        run_image_distill.main(argv)
    assert "Input sizes: student 16x16, teacher 16x16, teacher 24x24" in caplog.text
    # The first teacher shares the student's preprocessing; the second gets its own 24-px pixels of the same crop.
    assert seen[0]["pixel_values"][-2:] == (16, 16) and seen[0]["teacher_pixel_values_1"][-2:] == (24, 24)
    assert "teacher_pixel_values" not in seen[0]
    config = json.loads((out / "distill_config.json").read_text())
    assert config["teacher"]["ensemble"]["weights"] == [0.25, 0.75]
    assert [m["name_or_path"] for m in config["teacher"]["members"]] == ["t16", "t24"]
    teacher_metrics = json.loads((out / "teacher_eval_results.json").read_text())
    assert {"teacher_eval_accuracy", "teacher_eval_member_0_accuracy", "teacher_eval_member_1_accuracy"} <= set(
        teacher_metrics
    )
    card = (out / "README.md").read_text()
    assert "an ensemble of 2 teachers (a local checkpoint (`t16`), a local checkpoint (`t24`))" in card
    for i, name in ((1, "t16"), (2, "t24")):
        accuracy = 100 * teacher_metrics[f"teacher_eval_member_{i - 1}_accuracy"]
        assert f"| Teacher {i} (`{name}`) | {accuracy:.2f} |" in card
    assert f"| Teacher ensemble | {100 * teacher_metrics['teacher_eval_accuracy']:.2f} |" in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(config)


def test_the_script_refuses_a_teacher_of_another_label_space_before_loading(folders, tmp_path, monkeypatch):
    loaded = []
    original = distill.load_image_classifier  # the example loads its models with hfkd distill's step
    spy = lambda *a, **k: loaded.append(a) or original(*a, **k)  # noqa: E731
    monkeypatch.setattr(distill, "load_image_classifier", spy)
    argv = ["--dataset", folders["data"], "--output_dir", str(tmp_path / "x"), "--student", folders["student"],
            "--teacher", folders["t16"], "--teacher", folders["t7"], "--use_cpu", "--report_to", "none"]  # fmt: skip
    with pytest.raises(ValueError, match="predicts 7 classes"):
        run_image_distill.main(argv)
    assert loaded == [] and not (tmp_path / "x").exists()
