"""The chart of `hfkd report --png`: each group's best-epoch headline metric (top-1, mIoU: its task's) beside its CE
baseline, its teacher and the published number, on an axis from 0 (or a clearly marked broken one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hfkd.results.runs import headline

if TYPE_CHECKING:
    from hfkd.results.runs import GroupSummary


COLORS = {"bar": "#4c72b0", "ce": "#a5aab3", "baseline": "#3b3b3b", "teacher": "#dd8452", "published": "#c44e52"}


def _metric_names(summaries: list[GroupSummary], attribute: str) -> str:
    """The metrics of the charted groups' tasks (`top-1`, `mIoU`), each once."""
    return " / ".join(dict.fromkeys(getattr(headline(s.task), attribute) for s in summaries))


def _plot_rows(summaries: list[GroupSummary]) -> list[GroupSummary | str]:
    """Bars grouped by (task, dataset, student) under a header line naming the block's CE baseline and teacher (and
    the metric, when the chart holds several tasks)."""
    blocks: dict[tuple[str, str, str], list[GroupSummary]] = {}
    for s in summaries:
        blocks.setdefault((s.task, s.dataset or "", s.student_key or ""), []).append(s)
    several_tasks = len({task for task, _, _ in blocks}) > 1
    rows: list[GroupSummary | str] = []
    for key in sorted(blocks):
        members = sorted(blocks[key], key=lambda s: (s.loss != "ce", s.label))
        header = f"{members[0].student or 'student'}" + (f" on {members[0].dataset}" if members[0].dataset else "")
        header += f" ({headline(key[0]).name})" if several_tasks else ""
        baseline = next((s.baseline_value for s in members if s.baseline_value is not None), None)
        header += f": CE baseline {baseline:.2f}" if baseline is not None else ": no CE baseline run"
        teachers = {(s.teacher, s.teacher_origin, round(s.teacher_value, 2)) for s in members if s.teacher_value}
        if len(teachers) == 1:
            name, origin, value = teachers.pop()
            header += f", teacher {name} {value:.2f}" + (f" ({origin})" if origin else "")
        rows += [header, *members]
    return rows


def _axis(values: list[float]) -> tuple[float, float | None]:
    """The right end of the x axis, and where to break it (`None`: a plain axis from 0)."""
    from matplotlib.ticker import MaxNLocator

    low, high = min(values, default=0.0), max(values, default=1.0)
    # From 0, differences under a fifth of the top value are hard to see: break the axis (marked on the chart).
    if low <= 0 or high - low >= 0.2 * high:
        return max(high, 1.0), None
    ticks = MaxNLocator(6, steps=[1, 2, 5, 10]).tick_values(low - 0.1 * (high - low) - 0.5, high)
    return high, max(0.0, float(ticks[0]))


def build_figure(summaries: list[GroupSummary]) -> Any:
    """The chart of `save_png` as a matplotlib `Figure` (no pyplot, so no global backend change)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    rows = _plot_rows(summaries)
    bars = [(y, s) for y, s in enumerate(rows) if not isinstance(s, str)]
    values = [v for _, s in bars for v in _reference_values(s)]
    high, cut = _axis(values)
    fig = Figure(figsize=(11, 0.34 * len(rows) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    if cut:
        # 0..cut squeezed into a sliver, so bars still start at 0; a "//" cut marks the break on bars and axis.
        k = 0.08 * (high - cut) / cut
        squeeze = (
            lambda x: np.where(x < cut, x * k, x - cut + cut * k),
            lambda x: np.where(x < cut * k, x / k, x + cut - cut * k),
        )
        ax.set_xscale("function", functions=squeeze)
    printed = [_draw_bar(ax, y, s) for y, s in bars]
    by_axes_x = blended_transform_factory(ax.transAxes, ax.transData)
    headers = [
        ax.text(0.005, y, row, transform=by_axes_x, va="center", fontsize=9.5, fontweight="bold")
        for y, row in enumerate(rows)
        if isinstance(row, str)
    ]
    ax.set_yticks([y for y, _ in bars], [s.label for _, s in bars], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.grid(axis="x", color="#e3e3e3", zorder=0)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="x", labeltop=len(rows) > 25, top=len(rows) > 25, labelsize=9)
    _fit_printed_values(fig, ax, high, printed)
    xmax = ax.get_xlim()[1]
    ticks = MaxNLocator(8, steps=[1, 2, 5, 10]).tick_values(cut or 0.0, min(xmax, 100.0))
    ax.xaxis.set_major_locator(FixedLocator([0.0] * bool(cut) + [t for t in ticks if (cut or 0.0) <= t <= xmax]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    xlabel = f"{_metric_names([s for _, s in bars], 'long_name')} (%), best epoch, mean ± std over n seeds"
    if cut:
        xlabel += f"    [axis broken at //: 0 to {cut:g} squeezed, bars start at 0]"
        at = ax.transLimits.transform(ax.transScale.transform((cut, 0)))[0]
        for y, _ in bars:
            ax.plot([at - 0.004, at + 0.004], [y + 0.34, y - 0.34], transform=by_axes_x, color="white", lw=3, zorder=3)
        for dx in (-0.005, 0.005):
            ax.plot(
                [at + dx - 0.004, at + dx + 0.004],
                [-0.012, 0.012],
                transform=ax.transAxes,
                color="black",
                lw=1.2,
                clip_on=False,
                zorder=6,
            )
    ax.set_xlabel(xlabel, fontsize=10)
    _fit_texts(fig, [*headers, ax.xaxis.label])  # widening gives the printed values more room, never less
    fig.legend(handles=_legend([s for _, s in bars]), loc="outside upper center", ncol=5, fontsize=9, frameon=False)
    return fig


def _reference_values(s: GroupSummary) -> list[float]:
    values = (s.best_mean + s.best_std, s.best_mean - s.best_std, s.published, s.baseline_value, s.teacher_value)
    return [v for v in values if v is not None]


def _draw_bar(ax: Any, y: int, s: GroupSummary) -> tuple[float, Any]:
    """One group's bar, reference lines, published marker and printed values; returns where the printed values
    start and their last text."""
    style = {"textcoords": "offset points", "va": "center", "fontsize": 9, "zorder": 4}
    style["bbox"] = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85}
    color = COLORS["ce"] if s.loss == "ce" else COLORS["bar"]
    errors = {"capsize": 3, "elinewidth": 1, "ecolor": "#222222"}
    ax.barh(y, s.best_mean, xerr=s.best_std or None, height=0.62, color=color, zorder=2, error_kw=errors)
    if s.baseline_value is not None:
        ax.vlines(s.baseline_value, y - 0.5, y + 0.5, color=COLORS["baseline"], ls=(0, (4, 2)), lw=1.3, zorder=3)
    if s.teacher_value is not None:
        ax.vlines(s.teacher_value, y - 0.5, y + 0.5, color=COLORS["teacher"], lw=2, zorder=3)
    spread = f" ± {s.best_std:.2f}" if s.num_runs > 1 else ""
    end = max(s.best_mean + s.best_std, s.published or 0.0)
    text = ax.annotate(f"{s.best_mean:.2f}{spread} (n={s.num_runs})", (end, y), xytext=(6, 0), **style)
    if s.published is not None:
        ax.scatter(s.published, y, marker="D", s=42, color=COLORS["published"], edgecolor="white", zorder=5)
        text = ax.annotate(
            f"paper {s.published:.2f}", (1, 0.5), xycoords=text, xytext=(5, 0), color=COLORS["published"], **style
        )
    return end, text


def _legend(shown: list[GroupSummary]) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    entries = [
        (Patch(color=COLORS["bar"], label="student, distilled"), any(s.loss != "ce" for s in shown)),
        (Patch(color=COLORS["ce"], label="student, CE only"), any(s.loss == "ce" for s in shown)),
        (
            Line2D([], [], color=COLORS["baseline"], ls=(0, (4, 2)), label="CE baseline of the same student"),
            any(s.baseline_value is not None for s in shown),
        ),
        (
            Line2D([], [], color=COLORS["teacher"], lw=2, label=f"teacher's own {_metric_names(shown, 'name')}"),
            any(s.teacher_value is not None for s in shown),
        ),
        (
            Line2D([], [], color=COLORS["published"], marker="D", ls="none", label="published (paper)"),
            any(s.published is not None for s in shown),
        ),
    ]
    return [handle for handle, present in entries if present]


def _fit_texts(fig: Any, texts: list[Any]) -> None:
    """Widen the figure until `texts` (the block headers, written from the axes' left edge; the axis label) end inside
    it, with a margin: text widths vary a little with the resolution the chart is saved at."""
    for _ in range(4):
        fig.draw_without_rendering()
        end = max((text.get_window_extent().x1 for text in texts), default=0.0)
        overflow = end + 0.3 * fig.dpi - fig.bbox.x1
        if overflow <= 0:
            return
        fig.set_figwidth(fig.get_figwidth() + overflow / fig.dpi)


def _fit_printed_values(fig: Any, ax: Any, high: float, printed: list[tuple[float, Any]]) -> None:
    """Widen the x axis until the values printed after the bars fit inside it (texts keep their size in pixels)."""
    ax.set_xlim(0, high * 1.04)
    scale = ax.xaxis.get_transform()
    for _ in range(3):
        fig.draw_without_rendering()
        frame = ax.get_window_extent()
        left, right = scale.transform(np.array(ax.get_xlim()))
        need = right
        for anchor, text in printed:
            start = scale.transform(np.array([anchor]))[0]
            width = text.get_window_extent().x1 - ax.transData.transform((anchor, 0))[0]
            need = max(need, left + (start - left) * frame.width / max(frame.width - width - 8, 1.0))
        if need <= right:
            return
        ax.set_xlim(0, float(scale.inverted().transform(np.array([need]))[0]))


def save_png(summaries: list[GroupSummary], path: str | Path) -> None:
    """One bar per group (its task's best-epoch metric, mean ± std over seeds) from 0 (or a marked broken axis), the
    value printed, the CE baseline and the teacher as reference lines and the published number as a red diamond."""
    build_figure(summaries).savefig(path, dpi=110)
