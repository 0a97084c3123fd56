"""Metadata the assets attach: lineage, markdown tables and plots that render in the Dagster UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import dagster as dg


def lineage(value: dict[str, Any]) -> dict[str, Any]:
    """The DVC hashes and git commit every asset of a skill's chain records."""
    return {"dvc_skill_md5": value["skill_md5"], "dvc_data_md5": value["dataset_md5"],
            "git_commit": value["git_commit"] or "unknown"}


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


def delta_plot(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """Horizontal bars of candidate - parent per benchmark (points), with the paired 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["task"] for r in rows]
    deltas = [100 * r["delta"] for r in rows]
    low = [100 * (r["delta"] - r["delta_ci"][0]) for r in rows]
    high = [100 * (r["delta_ci"][1] - r["delta"]) for r in rows]
    figure, axes = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2), dpi=100)
    colors = ["tab:green" if d >= 0 else "tab:red" for d in deltas]
    axes.barh(labels, deltas, xerr=[low, high], color=colors, alpha=0.8, capsize=3)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.invert_yaxis()
    axes.set_xlabel("candidate - parent (points, 95% paired bootstrap interval)")
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")
