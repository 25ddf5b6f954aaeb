"""recipes/README.md lists every recipe with its header's published number; runs fill in the measured column."""

import re
import shutil
from pathlib import Path

import pytest

from hfkd.commands import recipes_index as recipes_index_command
from hfkd.results import recipes_index
from hfkd.results.runs import read_published

from .test_report import make_run

REPO = Path(__file__).resolve().parents[1]
README = REPO / "recipes" / "README.md"
ROW = re.compile(
    r"^\| \[`(?P<recipe>[^`]+)`\]\((?P<link>[^)]+)\) \| (?P<cell>.*) \| (?P<pub>[^|]+) \| (?P<meas>[^|]+) \|$"
)


def table_rows(text: str) -> dict[str, re.Match]:
    return {m["recipe"]: m for m in map(ROW.match, text.splitlines()) if m}


def test_committed_readme_is_up_to_date():
    assert recipes_index.update_readme(README) == README.read_text(encoding="utf-8"), (
        "recipes/README.md is out of step with the recipes: run `python -m hfkd.recipes_index`."
    )


def test_every_recipe_is_listed_once_with_its_header_numbers():
    rows = table_rows(README.read_text(encoding="utf-8"))
    recipes = sorted(p.relative_to(README.parent).as_posix() for p in README.parent.rglob("*.yaml"))
    assert sorted(rows) == recipes
    for recipe, row in rows.items():
        assert row["link"] == recipe and (README.parent / row["link"]).is_file()
        text = (README.parent / recipe).read_text(encoding="utf-8")
        published = read_published(README.parent / recipe, recipes_index.recipe_task(text))
        assert row["pub"] == ("see header" if published is None else f"{published:.2f}"), recipe
        reproduces = re.search(r"^# Reproduces: (.*)$", text, re.M).group(1)
        assert row["cell"] == reproduces.rstrip(".").replace("|", "\\|")


@pytest.fixture
def copy_of_recipes(tmp_path, monkeypatch) -> Path:
    """The recipes folder and README in a scratch copy, with the working directory at its root (as on a user's
    checkout, where run folders record `recipes/...` paths)."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_runs_fill_the_measured_column_and_other_rows_keep_theirs(copy_of_recipes):
    root = copy_of_recipes
    readme = root / "recipes" / "README.md"
    dkd = "recipes/cifar100/dkd/resnet8x4_from_resnet32x4.yaml"
    kd = "cifar100/kd/resnet8x4_from_resnet32x4.yaml"
    # A number measured elsewhere and committed by hand survives a rebuild without runs for it.
    text = readme.read_text(encoding="utf-8")
    kd_row = table_rows(text)[kd].group(0)
    readme.write_text(text.replace(kd_row, kd_row[: kd_row.rindex("| —")] + "| 73.10 ± 0.20 (3 seeds) |"))
    make_run(root / "runs" / "s0", [0.70, 0.7601, 0.7588], 0.7588, recipe=dkd)
    make_run(root / "runs" / "s1", [0.70, 0.7580, 0.7622], 0.7622, recipe=str(root / dkd))  # absolute spelling

    assert recipes_index_command.main(["--readme", str(readme), "--runs", str(root / "runs")]) == 0
    rows = table_rows(readme.read_text(encoding="utf-8"))
    best = [76.01, 76.22]
    mean, std = sum(best) / 2, (((best[0] - best[1]) ** 2) / 2) ** 0.5
    assert rows[dkd.removeprefix("recipes/")]["meas"] == f"{mean:.2f} ± {std:.2f} (2 seeds)"
    assert rows[kd]["meas"] == "73.10 ± 0.20 (3 seeds)"
    untouched = [r for r in rows if r not in (kd, dkd.removeprefix("recipes/"))]
    assert all(rows[r]["meas"] == "—" for r in untouched)
    assert recipes_index_command.main(["--readme", str(readme), "--check"]) == 0


def test_check_reports_a_stale_readme_and_a_missing_marker_is_an_error(copy_of_recipes, capsys):
    readme = copy_of_recipes / "recipes" / "README.md"
    new_recipe = copy_of_recipes / "recipes" / "cifar100" / "kd" / "resnet20_from_resnet110.yaml"
    new_recipe.write_text("# Reproduces: a new cell.\n# published_top1: 70.10\ndistill_loss: kd\n")
    before = readme.read_text(encoding="utf-8")
    assert recipes_index_command.main(["--readme", str(readme), "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert readme.read_text(encoding="utf-8") == before  # --check never writes
    assert recipes_index_command.main(["--readme", str(readme)]) == 0
    assert table_rows(readme.read_text(encoding="utf-8"))["cifar100/kd/resnet20_from_resnet110.yaml"]["pub"] == "70.10"
    readme.write_text(before.replace(recipes_index.START, ""))
    with pytest.raises(ValueError, match="markers"):
        recipes_index.update_readme(readme)


def test_a_segmentation_recipe_lists_its_published_and_measured_miou(copy_of_recipes):
    from .test_report import SEG_SEEDS, make_segmentation_run, write_segmentation_recipe

    root = copy_of_recipes
    readme = root / "recipes" / "README.md"
    recipe = "recipes/cityscapes/cwd/deeplabv3_resnet18_from_resnet101.yaml"
    write_segmentation_recipe(root, recipe, 75.90)
    for seed, (mious, final) in SEG_SEEDS.items():
        make_segmentation_run(root / "runs" / f"s{seed}", mious, final, recipe=recipe)
    assert recipes_index_command.main(["--readme", str(readme), "--runs", str(root / "runs")]) == 0
    text = readme.read_text(encoding="utf-8")
    title = recipes_index.section_of(recipe.removeprefix("recipes/"))
    assert title.startswith("Cityscapes semantic segmentation")
    section = text.split(f"### {title} (4)\n", 1)[1]
    assert section.startswith("\n| recipe | reproduces | published mIoU | measured mIoU (best epoch) |\n")
    best = [100 * max(mious) for mious, _ in SEG_SEEDS.values()]
    mean, std = sum(best) / 2, abs(best[0] - best[1]) / 2**0.5
    row = table_rows(text)[recipe.removeprefix("recipes/")]
    assert row["pub"] == "75.90" and row["meas"] == f"{mean:.2f} ± {std:.2f} (2 seeds)"
    assert "| published top-1 | measured top-1 (best epoch) |" in text  # the classification tables keep theirs

    # A table of recipes of several tasks names each published number's metric.
    (root / recipe).rename(root / "recipes" / "cifar100" / "kd" / "segmentation_in_a_classification_folder.yaml")
    assert recipes_index_command.main(["--readme", str(readme)]) == 0
    rows = table_rows(readme.read_text(encoding="utf-8"))
    assert rows["cifar100/kd/segmentation_in_a_classification_folder.yaml"]["pub"] == "75.90 mIoU"
    assert rows["cifar100/kd/resnet8x4_from_resnet32x4.yaml"]["pub"].endswith(" top-1")
