"""`--report_to` checked when the arguments are built: an integration whose package is not installed is refused
before any model or data loads (the Trainer would only fail once it starts)."""

from __future__ import annotations

from typing import Any

from hfkd.utils.errors import UsageError

# --report_to names whose Python package has another name.
_REPORT_PACKAGES = {"azure_ml": "azureml-core", "comet_ml": "comet_ml", "flyte": "flytekit"}


def check_reporting(report_to: Any) -> None:
    """Refuse, before any model or data loads, a `--report_to` integration whose package is not installed (the
    Trainer would only fail once it starts)."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    wanted = [name for name in names if name not in ("none", "all")]
    if not wanted:
        return
    unknown = [name for name in wanted if name not in INTEGRATION_TO_CALLBACK]
    if unknown:
        choices = ", ".join(INTEGRATION_TO_CALLBACK)
        raise UsageError(f"--report_to {', '.join(unknown)}: not an integration; use one of {choices}, or none.")
    missing = [name for name in wanted if name not in get_available_reporting_integrations() and name != "flyte"]
    if missing:
        packages = " ".join(_REPORT_PACKAGES.get(name, name) for name in missing)
        raise UsageError(
            f"--report_to {', '.join(missing)} needs its package, which is not installed: `pip install {packages}` "
            "(or --report_to none)."
        )
