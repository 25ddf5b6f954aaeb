#!/usr/bin/env bash
# A user's install, not the editable one `make test` uses: a clean virtual environment, the torch pair, then
# `pip install .` from this checkout. Checks the installed package imports, its templates ship, the `hfkd` command
# and the module entry points answer --help from outside the source tree, and the [deepspeed] extra resolves.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

python3 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/pip -q --disable-pip-version-check"
PY="$WORK/venv/bin/python"
$PIP install --upgrade pip setuptools wheel
# shellcheck disable=SC2086
$PIP install $TORCH_SPEC
$PIP install "$ROOT" >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; exit 1; }
# setuptools warns, and a later release fails, when package data sits outside the declared packages.
if grep -i "warning: package .* is absent\|deprecated" "$WORK/install.log"; then exit 1; fi

cd "$WORK"  # away from the checkout: the imports below must come from site-packages
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
$PY - <<'PY'
import os
import hfkd
from hfkd import DistillationArguments, DistillationTrainer, list_losses  # noqa: F401
assert "site-packages" in hfkd.__file__, hfkd.__file__
template = os.path.join(os.path.dirname(hfkd.__file__), "hub", "templates", "model_card.md")
assert os.path.isfile(template), f"{template} was not installed"
from hfkd.metrics import METRIC_DIR, _load_metric
assert (METRIC_DIR / "top_k_accuracy.py").is_file(), f"{METRIC_DIR} was not installed"
_load_metric()  # evaluate loads the shipped metric offline
print(f"hfkd {hfkd.__version__} from {os.path.dirname(hfkd.__file__)}; {len(list_losses())} losses")
PY
$PY "$ROOT/examples/run_image_distill.py" --help >/dev/null
# The console script, from outside the checkout: the command list, and each command's own page under its name.
HFKD="$WORK/venv/bin/hfkd"
"$HFKD" --help >"$WORK/help"
grep -q "^  recipes-index " "$WORK/help" || { echo "hfkd --help does not list the commands:"; cat "$WORK/help"; exit 1; }
for command in distill cache report convert; do
    "$HFKD" "$command" --help >"$WORK/help"
    grep -q "^usage: hfkd $command " "$WORK/help" || { echo "hfkd $command --help:"; cat "$WORK/help"; exit 1; }
done
# A wrong value is one line (and the HFKD_TRACEBACK hint) with a non-zero status, not a traceback.
if "$HFKD" distill --student x --output_dir "$WORK/o" --drop_path_rate 2 2>"$WORK/err"; then exit 1; fi
grep -q "^hfkd distill: error: --drop_path_rate" "$WORK/err" && ! grep -q "^Traceback" "$WORK/err" \
    || { echo "hfkd distill with a wrong value:"; cat "$WORK/err"; exit 1; }
$PY -m hfkd distill --help >/dev/null
$PY -m hfkd.teacher_cache --help >/dev/null
$PY -m hfkd.convert --help >/dev/null
$PY -m hfkd.report --help >/dev/null
$PIP install --dry-run --no-build-isolation "$ROOT[deepspeed]" >/dev/null
echo "install check: OK"
