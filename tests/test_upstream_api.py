"""The private members of other libraries that hfkd uses are all in hfkd.utils.upstream, and each is still there, with
the same signature, in the installed library: an upgrade that breaks one fails here, in a test named after it."""

import argparse
import ast
import importlib
import inspect
import json
from pathlib import Path

import evaluate
import pytest
import torch
from transformers import HfArgumentParser, PretrainedConfig, Trainer, TrainerCallback, TrainingArguments

from hfkd.hub.commits import hub_commit
from hfkd.utils import upstream

from .testing_utils import tiny_resnet

REPO = Path(__file__).resolve().parents[1]
FENCE = "hfkd/utils/upstream.py"

# Private uses in files this branch may not edit, each to move behind hfkd.utils.upstream (or to public API) by the
# owner of the file; the test fails once one is gone, so that its entry is removed with it.
PENDING: dict[tuple[str, str], str] = {}


def _resolve(path: str) -> object:
    """A module or a module's attribute, by dotted path."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def signature_text(function: object) -> str:
    """`function`'s signature without annotations (which change wording across releases without changing calls)."""
    signature = inspect.signature(function)
    parameters = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> dict[str, object]:
    """An instance of each owner whose instance attributes hfkd uses."""
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("t")), use_cpu=True, report_to="none")
    parser = argparse.ArgumentParser()
    return {
        "transformers.Trainer": Trainer(model=tiny_resnet(), args=args),
        "argparse.ArgumentParser": parser,
        "argparse._ArgumentGroup": parser.add_argument_group("group"),
    }


@pytest.mark.parametrize("owner,member", list(upstream.UPSTREAM), ids=[f"{o}.{m}" for o, m in upstream.UPSTREAM])
def test_private_member_is_as_hfkd_expects(owner, member, instances):
    expected = upstream.UPSTREAM[owner, member]
    found = _resolve(owner)
    if expected == upstream.INSTANCE_ATTRIBUTE:
        holder = instances.get(owner, found)
        assert hasattr(holder, member), f"{owner} instances no longer have {member}"
    elif expected == upstream.READ_BY_UPSTREAM:
        assert member in inspect.getsource(found), f"{owner} no longer reads {member}"
    else:
        assert hasattr(found, member), f"{owner}.{member} is gone"
        assert signature_text(getattr(found, member)) == expected, f"{owner}.{member} changed its signature"


def test_every_override_in_the_fence_is_listed():
    """Each private method TrainerInternals or HelpFormatterInternals overrides is in UPSTREAM (so it is checked)."""
    listed = {member for _, member in upstream.UPSTREAM}
    for cls in (upstream.TrainerInternals, upstream.HelpFormatterInternals):
        private = {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
        assert private <= listed, private - listed


def test_signature_text_sees_a_changed_signature():
    def before(self, model, trial): ...

    def after(self, model, trial, extra): ...

    def annotated(self, model: torch.nn.Module, trial: object = None) -> None: ...

    assert signature_text(before) == "(self, model, trial)" != signature_text(after)
    assert signature_text(annotated) == "(self, model, trial=None)"


# ----------------------------------------------------------------------------------------- no use outside the fence


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _upstream_private_names(instances: dict[str, object]) -> set[str]:
    """Private member names of the library classes hfkd subclasses or hands its objects to, and of their instances:
    hfkd defining one of these overrides it, or collides with it."""
    holders = [Trainer, TrainingArguments, TrainerCallback, HfArgumentParser, HfArgumentParser(),
               argparse.Action, argparse.HelpFormatter("prog"), torch.nn.Module, tiny_resnet(), PretrainedConfig,
               PretrainedConfig(), evaluate.Metric, torch.autograd.Function, *instances.values()]  # fmt: skip
    names = {name for holder in holders for name in dir(holder) if _private(name)}
    return names | {member for _, member in upstream.UPSTREAM}


def _defined_in_hfkd(trees: dict[str, ast.Module]) -> set[str]:
    """Every name hfkd itself defines: functions, classes, assigned attributes and variables, arguments."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def _uses(node: ast.AST) -> list[str]:
    """Private names `node` reads, defines or imports from another library."""
    if isinstance(node, ast.Attribute) and _private(node.attr):
        return [node.attr]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
        return [node.name]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) > 1:
        name = node.args[1]
        if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and isinstance(name, ast.Constant):
            return [name.value] if isinstance(name.value, str) and _private(name.value) else []
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] != "hfkd":
        private_module = any(_private(part) for part in node.module.split("."))
        return [f"{node.module}.{a.name}" for a in node.names if private_module or _private(a.name)]
    return []


def private_uses_outside_the_fence(instances: dict[str, object], root: Path = REPO) -> list[tuple[str, int, str]]:
    """(file, line, name) of each private member of another library that hfkd uses outside hfkd.utils.upstream: a
    private name hfkd does not define itself, one a library class or instance defines (an override or a collision),
    a private import, and a swap of an object's `__class__`."""
    trees = {str(p.relative_to(root)): ast.parse(p.read_text()) for p in sorted((root / "hfkd").rglob("*.py"))}
    defined, upstream_names = _defined_in_hfkd(trees), _upstream_private_names(instances)
    found = []
    for path, tree in trees.items():
        if path == FENCE:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                found.append((path, node.lineno, "__class__"))
            for name in _uses(node):
                foreign = "." in name or name not in defined or name in upstream_names
                if foreign and name not in upstream.DOCUMENTED_OVERRIDES.get(path, ()):
                    found.append((path, node.lineno, name))
    return sorted(set(found))


def test_no_private_use_of_another_library_outside_the_fence(instances):
    found = private_uses_outside_the_fence(instances)
    unexpected = [f"{path}:{line}: {name}" for path, line, name in found if (path, name) not in PENDING]
    assert not unexpected, "private members used outside hfkd/utils/upstream.py:\n" + "\n".join(unexpected)
    gone = set(PENDING) - {(path, name) for path, _, name in found}
    assert not gone, f"no longer used, remove from PENDING: {sorted(gone)}"


def test_the_scan_finds_each_kind_of_private_use(instances, tmp_path):
    """The scan, on a file that does each thing it must catch, names each line (and leaves hfkd's own names)."""
    source = '''
import argparse
from transformers.trainer_utils import _private_helper
from torch._dynamo import optimize


class Mine:
    def _own(self):
        return self._own_state

    def _save_checkpoint(self, model, trial):
        self._own_state = 1


def f(parser, config, action):
    parser._actions
    getattr(config, "_commit_hash", None)
    action.__class__ = argparse.Action
'''
    fake = tmp_path / "hfkd"
    fake.mkdir()
    (fake / "module.py").write_text(source)
    names = [(line, name) for _, line, name in private_uses_outside_the_fence(instances, root=tmp_path)]
    assert names == [
        (3, "transformers.trainer_utils._private_helper"),
        (4, "torch._dynamo.optimize"),
        (11, "_save_checkpoint"),
        (16, "_actions"),
        (17, "_commit_hash"),
        (18, "__class__"),
    ]


@pytest.mark.parametrize("name", ["transformers", "accelerate", "timm", "datasets"])
def test_the_libraries_hfkd_builds_on_are_bounded_by_their_next_major_release(name):
    """setup.cfg admits the installed release (CI installs the newest inside the bounds) and not the next major one,
    which may drop what hfkd overrides or reads."""
    import configparser
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requirements = [Requirement(line) for line in config["options"]["install_requires"].split("\n") if line.strip()]
    (specifier,) = [r.specifier for r in requirements if r.name == name]
    installed = Version(version(name))
    assert installed in specifier and Version(f"{installed.major + 1}.0") not in specifier, specifier


# --------------------------------------------------------------------------------------------- public replacements


def test_the_commit_a_hub_model_was_loaded_from_comes_from_the_hub_cache(tmp_path):
    """transformers 5 leaves `config._commit_hash` unset; the Hub cache's snapshot folder names the commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--teacher"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps({}))
    assert hub_commit("org/teacher", "main", cache_dir=str(tmp_path)) == commit
    assert hub_commit("org/teacher", None, cache_dir=str(tmp_path)) == commit
    assert hub_commit("org/teacher", "other-branch", cache_dir=str(tmp_path)) is None
    assert hub_commit("org/absent", "main", cache_dir=str(tmp_path)) is None
    assert hub_commit(str(tmp_path), "main", cache_dir=str(tmp_path)) is None  # a local folder
