"""Metadata the assets attach: lineage, markdown tables and plots that render in the Dagster UI."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:  # the comparison's module imports torch, which loading the code location does not need
    from sdft_core.evaluation.comparison import Comparison


def progress_log(log, label: str, every_s: float = 30.0, clock=time.monotonic) -> Callable[[str, int, int], None]:
    """An evaluation progress callback for the run's log: each task's end, and one line per `every_s` at most
    within a task."""
    last = [clock()]

    def report(task: str, done: int, total: int) -> None:
        now = clock()
        if done == total or now - last[0] >= every_s:
            log.info(f"evaluating {label}: {task} {done}/{total}")
            last[0] = now

    return report


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, limit: int = 20) -> str:
    if not rows:
        return "_(none)_"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 160 else text[:157] + "..."

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows not shown_")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _pyplot().close(figure)
    return buffer.getvalue()


def delta_plot(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """Horizontal bars of candidate - parent per benchmark (points), with the paired 95% interval; when the rows
    carry an SFT baseline (`baseline_delta`), its bars beside them."""
    import numpy as np

    plt = _pyplot()
    labels = [r["task"] for r in rows]
    series = [("SDFT candidate", "delta", "delta_ci")]
    if rows and "baseline_delta" in rows[0]:
        series.append(("SFT baseline", "baseline_delta", "baseline_delta_ci"))
    height = 0.8 / len(series)
    positions = np.arange(len(rows))
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(rows) * len(series) + 1.2), dpi=100)
    for index, (name, key, ci) in enumerate(series):
        deltas = [100 * r[key] for r in rows]
        low = [100 * (r[key] - r[ci][0]) for r in rows]
        high = [100 * (r[ci][1] - r[key]) for r in rows]
        if len(series) == 1:
            colors = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
        else:
            colors = ["tab:blue" if index == 0 else "tab:orange"] * len(rows)
        axes.barh(
            positions + (index - (len(series) - 1) / 2) * height,
            deltas,
            height=height,
            xerr=[low, high],
            color=colors,
            alpha=0.8,
            capsize=3,
            label=name,
        )
    axes.set_yticks(positions, labels)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlabel("model - parent (points, 95% paired bootstrap interval)")
    if len(series) > 1:
        axes.legend()
    axes.set_title(title)
    return _png(figure)


def training_curve_plot(metrics: Sequence[dict[str, float]], title: str) -> bytes:
    """Loss and, for SDFT, the per-token KL(teacher || student) by optimizer step (from metrics.jsonl)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    steps = [m["step"] for m in metrics]
    for key, label in (
        ("loss", "loss"),
        ("divergence", "KL(teacher || student) per token"),
        ("cross_entropy", "cross-entropy per token"),
    ):
        if metrics and key in metrics[0]:
            axes.plot(steps, [m[key] for m in metrics], marker="o" if len(steps) < 30 else None, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_yscale("log" if all(m["loss"] > 0 for m in metrics) else "linear")
    axes.legend()
    axes.grid(alpha=0.3)
    axes.set_title(title)
    return _png(figure)


def skill_versus_prior_plot(points: dict[str, tuple[float, float]], title: str) -> bytes:
    """One point per model: prior-capability average (x) against the new skill's score (y), in percent. Up is
    learning, left is forgetting. Labels may hold a second line (e.g. the model's KL to the base)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.8), dpi=100)
    seen: dict[tuple[float, float], int] = {}  # labels of points at the same place are stacked, not overprinted
    for label, (prior, skill) in points.items():
        place = (round(100 * prior, 6), round(100 * skill, 6))
        below = seen.get(place, 0)
        seen[place] = below + 1 + label.count("\n")
        axes.scatter([100 * prior], [100 * skill], s=60)
        axes.annotate(
            label,
            (100 * prior, 100 * skill),
            textcoords="offset points",
            xytext=(6, 6 - 11 * below),
            fontsize=8,
            va="top" if below else "bottom",
        )
    axes.set_xlabel("prior-capability average (%)")
    axes.set_ylabel("new skill (%)")
    axes.grid(alpha=0.3)
    axes.margins(0.3)
    axes.set_title(title)
    return _png(figure)


def comparison_metadata(table: Comparison, labels: Mapping[str, str]) -> dict[str, Any]:
    """A comparison's headline scores (fractions) with their paired intervals, each model's KL to the base, and its
    two tables in points (per benchmark, per model), sortable in the UI."""
    skill, prior = table.scores("new_skill"), table.scores("prior_average")
    metadata: dict[str, Any] = {
        "new_skill_candidate": skill["candidate"],
        "new_skill_parent": skill["parent"],
        "prior_average_candidate": prior["candidate"],
        "prior_average_parent": prior["parent"],
        "new_skill_ci_low": table.new_skill_ci[0],
        "new_skill_ci_high": table.new_skill_ci[1],
        "prior_average_ci_low": table.prior_average_ci[0],
        "prior_average_ci_high": table.prior_average_ci[1],
    }
    if "baseline" in skill:
        metadata |= {"new_skill_baseline": skill["baseline"], "prior_average_baseline": prior["baseline"]}
    return (
        metadata
        | {f"kl_to_base_{who}": d["mean"] for who, d in table.drift.items()}
        | {
            "kl_to_base": dg.MetadataValue.json(table.drift),
            "models": table_metadata(table.model_table(labels)),
            "deltas": table_metadata(table.benchmark_table()),
        }
    )


def table_metadata(rows: Sequence[dict[str, Any]]) -> dg.MetadataValue:
    """Rows as Dagster table metadata (sortable in the UI), column types from the first row."""
    types = {float: "float", int: "int", bool: "bool"}
    columns = [dg.TableColumn(name, types.get(type(value), "string")) for name, value in rows[0].items()]
    return dg.MetadataValue.table([dg.TableRecord(dict(row)) for row in rows], dg.TableSchema(columns))


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
