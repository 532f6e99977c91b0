"""Result plots from an Analysis.

``line``: the metric against real fraction (or count), one line per level of the baseline
factor (synthetic amount) with its confidence band for the mean; filled markers are cells
significantly different from the baseline (000 Fig. 2). ``box``: a box per cell grouped by real
fraction, with a bracket marking each cell that is *not* significantly different from its
baseline (001 Fig. 10) and a star over those that are. Other table factors become panels.
Uses matplotlib's object API (no pyplot), so nothing global changes and no display is needed.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats

from synthmix.results.analysis import Analysis
from synthmix.results.design import cell_name, format_level
from synthmix.results.store import ResultsError

PLOT_KINDS = ("line", "box")
X_PREFERENCE = ("real_fraction", "real_count")
_PANEL_SIZE = (5.2, 3.9)
MAX_POINTS = 30  # box plots also draw each value when a box holds at most this many


def plot(analysis: Analysis, path: str | os.PathLike, *, kind: str = "line", x: str | None = None) -> str:
    """Write the plot to ``path`` (format from its suffix) and return the path."""
    if kind not in PLOT_KINDS:
        raise ResultsError(f"unknown plot kind {kind!r}; known: {', '.join(PLOT_KINDS)}")
    x_factor = _x_factor(analysis, x, numeric=kind == "line")
    hue = analysis.baseline_factor if analysis.baseline_factor != x_factor else None
    panel_factors = [f for f in analysis.factors if f not in (x_factor, hue)]
    panels = _panels(analysis.cells, panel_factors)
    ncols, nrows = min(len(panels), 3), -(-len(panels) // 3)
    fig = Figure(figsize=(max(7.0, _PANEL_SIZE[0] * ncols), _PANEL_SIZE[1] * nrows + 0.6),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
    hues = _levels(analysis.cells, hue)
    colours = _colours(len(hues))
    for ax, (levels, cells) in zip(axes, panels):
        draw = _draw_lines if kind == "line" else _draw_boxes
        draw(ax, analysis, cells, x_factor, hue, hues, colours)
        ax.set_title(cell_name(panel_factors, levels) if panel_factors else "", fontsize=10)
        ax.set_xlabel(x_factor or "")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_ylabel(analysis.metric)
    handles = _legend(analysis, kind, hue, hues, colours)
    per_row = max(1, int(fig.get_figwidth() / 2.4))  # about 2.4 inches per legend entry
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row),
                   fontsize=9, frameon=False)
    fig.suptitle(_subtitle(analysis, kind), fontsize=10)
    fig.savefig(path, dpi=120)
    return os.fspath(path)


def _x_factor(analysis: Analysis, x: str | None, *, numeric: bool) -> str | None:
    if x is not None:
        if x not in analysis.factors:
            raise ResultsError(f"--x {x!r} is not a table factor ({', '.join(analysis.factors)})")
        if numeric and not pd.api.types.is_numeric_dtype(analysis.cells[x]):
            raise ResultsError(f"--x {x!r} is not numeric; a line plot needs a numeric x axis")
        return x
    for name in X_PREFERENCE:
        if name in analysis.factors:
            return name
    candidates = [f for f in analysis.factors if f != analysis.baseline_factor
                  and (not numeric or pd.api.types.is_numeric_dtype(analysis.cells[f]))]
    if candidates:
        return candidates[0]
    if numeric:
        raise ResultsError("a line plot needs a numeric factor for the x axis (real_fraction or "
                           "real_count) other than the baseline factor; pass --x or use --plot-kind box")
    return None


def _panels(cells: pd.DataFrame, factors: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    if not factors:
        return [((), cells)]
    return [(k if isinstance(k, tuple) else (k,), g) for k, g in cells.groupby(factors, sort=True)]


def _levels(cells: pd.DataFrame, factor: str | None) -> list:
    return [None] if factor is None else sorted(cells[factor].dropna().unique())


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"] if n > 10 else colormaps["tab10"]
    return [cmap(i / max(n - 1, 1)) if n > 10 else cmap(i) for i in range(n)]


def _hue_cells(cells: pd.DataFrame, hue: str | None, level: object) -> pd.DataFrame:
    return cells if hue is None else cells.loc[cells[hue] == level]


def _draw_lines(ax, analysis: Analysis, cells: pd.DataFrame, x: str, hue, hues, colours) -> None:
    for level, colour in zip(hues, colours):
        part = _hue_cells(cells, hue, level).sort_values(x)
        xs = part[x].to_numpy(dtype=float)
        mean, low, high = _mean_band(part, analysis.alpha)
        ax.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
        ax.plot(xs, mean, color=colour, linewidth=1.6)
        filled = part["significant"].fillna(False).to_numpy(dtype=bool) if "significant" in part else np.zeros(len(part), bool)
        ax.scatter(xs[filled], mean[filled], color=colour, edgecolor="black", s=42, zorder=3)
        ax.scatter(xs[~filled], mean[~filled], facecolor="white", edgecolor=colour, s=36, zorder=3)
    ticks = sorted(cells[x].unique())
    ax.set_xticks(ticks, [format_level(t) for t in ticks])


def _mean_band(part: pd.DataFrame, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = part["mean"].to_numpy(dtype=float)
    n = part["n"].to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        half = stats.t.ppf(1 - alpha / 2, n - 1) * part["std"].to_numpy(dtype=float) / np.sqrt(n)
    half = np.nan_to_num(half, nan=0.0)
    return mean, mean - half, mean + half


def _draw_boxes(ax, analysis: Analysis, cells: pd.DataFrame, x: str | None, hue, hues, colours) -> None:
    data = analysis.data
    groups = _levels(cells, x)
    width = 0.8 / len(hues)
    positions, top = {}, {}
    for gi, group in enumerate(groups):
        for hi, level in enumerate(hues):
            row = _find(cells, {x: group, hue: level})
            if row is None:
                continue
            values = _values(data, analysis, row)
            pos = gi + (hi - (len(hues) - 1) / 2) * width
            box = ax.boxplot([values], positions=[pos], widths=width * 0.85, patch_artist=True,
                             showfliers=True, flierprops={"markersize": 3})
            box["boxes"][0].set_facecolor(colours[hi])
            box["boxes"][0].set_alpha(0.75)
            box["medians"][0].set_color("black")
            if len(values) <= MAX_POINTS:  # few values: show each (a box of one is only a line)
                ax.scatter(np.full(len(values), pos), values, s=14, color=colours[hi],
                           edgecolor="black", linewidth=0.5, zorder=3)
            positions[(group, level)] = pos
            top[(group, level)] = float(np.max(values)) if len(values) else np.nan
    _annotate(ax, analysis, cells, x, hue, positions, top)
    ax.set_xticks(range(len(groups)), [format_level(g) if g is not None else "" for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)


def _annotate(ax, analysis: Analysis, cells: pd.DataFrame, x, hue, positions: dict, top: dict) -> None:
    """A star over each cell significantly different from its baseline; above all stars of
    the group, a bracket from each not-significant cell to its baseline (shortest first)."""
    if analysis.baseline_factor is None or hue is None:
        return
    finite = [v for v in top.values() if np.isfinite(v)]
    if not finite:
        return
    ymin, ymax = ax.get_ylim()
    step = 0.06 * (ymax - ymin)
    brackets: dict = {}
    for row in cells.loc[~cells["baseline"].astype(bool)].to_dict("records"):
        group, level = (row[x] if x else None), row[hue]
        cell, base = (group, level), (group, analysis.baseline_level)
        if cell not in positions or base not in positions or row.get("significant") is None:
            continue
        if row["significant"]:
            ax.text(positions[cell], top[cell] + step * 0.2, "*", ha="center", va="bottom",
                    fontsize=13, fontweight="bold")
        else:
            brackets.setdefault(group, []).append((abs(positions[cell] - positions[base]), cell, base))
    highest = max(finite)
    for group, items in brackets.items():
        group_top = max(v for key, v in top.items() if key[0] == group and np.isfinite(v))
        for k, (_, cell, base) in enumerate(sorted(items, key=lambda item: item[0])):
            y = group_top + step * (2.0 + 1.1 * k)  # clear of the stars below
            x1, x2 = positions[base], positions[cell]
            ax.plot([x1, x1, x2, x2], [y - step * 0.3, y, y, y - step * 0.3], color="black", linewidth=0.9)
            ax.text((x1 + x2) / 2, y + step * 0.05, "n.s.", ha="center", va="bottom", fontsize=8)
            highest = max(highest, y + step * 0.6)
    ax.set_ylim(ymin, max(ymax, highest + step * 0.8))


def _find(cells: pd.DataFrame, levels: dict) -> dict | None:
    mask = np.ones(len(cells), dtype=bool)
    for factor, level in levels.items():
        if factor is not None:
            mask &= (cells[factor] == level).to_numpy()
    rows = cells.loc[mask].to_dict("records")
    return rows[0] if rows else None


def _values(data: pd.DataFrame, analysis: Analysis, row: dict) -> np.ndarray:
    mask = np.ones(len(data), dtype=bool)
    for factor in analysis.factors:
        mask &= (data[factor] == row[factor]).to_numpy()
    return data.loc[mask, analysis.metric].to_numpy(dtype=float)


def _legend(analysis: Analysis, kind: str, hue, hues, colours) -> list:
    handles = []
    for level, colour in zip(hues, colours):
        if hue is None:
            continue
        label = f"{hue}={format_level(level)}"
        if level == analysis.baseline_level:
            label += " (baseline)"
        handles.append(Patch(facecolor=colour, alpha=0.75, label=label) if kind == "box"
                       else Line2D([], [], color=colour, marker="o", label=label))
    if analysis.baseline_factor is not None and kind == "line":
        handles.append(Line2D([], [], linestyle="", marker="o", color="grey", markeredgecolor="black",
                              label="significant vs baseline"))
        handles.append(Line2D([], [], linestyle="", marker="o", markerfacecolor="white",
                              markeredgecolor="grey", label="not significant"))
    return handles


def _subtitle(analysis: Analysis, kind: str) -> str:
    band = f"mean with {(1 - analysis.alpha) * 100:g}% confidence band of the mean"
    if analysis.baseline_factor is None:
        return f"{analysis.metric}: {band}" if kind == "line" else analysis.metric
    test = (f"vs {analysis.baseline_factor}={format_level(analysis.baseline_level)}: {analysis.test} "
            f"test, {analysis.correction} correction, \u03b1={analysis.alpha:g}")
    if kind == "line":
        return f"{analysis.metric}: {band}\nfilled markers: significant {test}"
    over = " (boxes over test subjects)" if analysis.unit == "subjects" else ""
    return f"{analysis.metric}{over}: * significant, n.s. not significantly different\n{test}"
