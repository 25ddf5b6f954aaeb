import json

import pytest
from transformers import HfArgumentParser

from hfkd import DistillationArguments


def _args(tmp_path, **kwargs) -> DistillationArguments:
    return DistillationArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_defaults(tmp_path):
    args = _args(tmp_path)
    assert args.distill_loss == "kd" and args.distill_loss_kwargs == {}
    assert args.distill_ce_weight == 1.0 and args.distill_weight == 1.0
    assert args.remove_unused_columns is False
    assert args.teacher_model_revision == "main"


def test_every_distillation_field_has_help_and_a_prefix():
    import dataclasses

    from transformers import TrainingArguments

    ours = {f.name for f in dataclasses.fields(DistillationArguments)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    assert ours
    for f in dataclasses.fields(DistillationArguments):
        if f.name in ours:
            assert f.name.startswith(("teacher_", "distill_")), f.name
            assert f.metadata.get("help"), f.name
            assert "%" not in f.metadata["help"]


def test_unknown_loss_lists_close_matches(tmp_path):
    with pytest.raises(KeyError, match="Did you mean 'dist'"):
        _args(tmp_path, distill_loss="dits")


def test_misspelled_kwarg_names_loss_and_key(tmp_path):
    with pytest.raises(ValueError, match=r"'dist'.*'gama'"):
        _args(tmp_path, distill_loss="dist", distill_loss_kwargs={"gama": 2.0})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"distill_loss_kwargs": {"temperature": 0}}, "temperature"),
        ({"distill_loss": "dkd", "distill_loss_kwargs": {"temperature": -1.0}}, "temperature"),
        ({"distill_weight": -1.0}, "distill_weight"),
        ({"distill_ce_weight": -0.5}, "distill_ce_weight"),
        ({"distill_loss_kwargs": "{not json"}, "JSON"),
        ({"distill_loss": "ce", "distill_loss_kwargs": {"temperature": 2}}, "takes no loss kwargs"),
    ],
)
def test_bad_values_are_rejected_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kwargs)


def test_json_strings_from_the_command_line(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--report_to",
            "none",
            "--use_cpu",
            "--distill_loss",
            "dkd",
            "--distill_loss_kwargs",
            json.dumps({"beta": 2.0, "temperature": 1.0}),
            "--teacher_model_init_kwargs",
            '{"revision": "v1"}',
            "--distill_weight",
            "0.5",
        ]
    )
    assert args.distill_loss_kwargs == {"beta": 2.0, "temperature": 1.0}
    assert args.teacher_model_init_kwargs == {"revision": "v1"}
    assert args.distill_weight == 0.5
