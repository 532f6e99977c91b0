"""Render an Analysis as a text table, Markdown, LaTeX, CSV or JSON.

Text formats show ``mean (std) n=N`` per cell in the papers' layout (000 Tables 2-4): a
significant difference from the baseline is starred (text) or bold (Markdown, LaTeX), the
baseline is marked with a dagger, and the footer says which test and correction were used.
Written by hand because pandas' to_markdown/to_latex need extra packages (tabulate, jinja2).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from synthmix.results.analysis import Analysis
from synthmix.results.design import format_level

FORMATS = ("table", "markdown", "latex", "csv", "json")


def render(analysis: Analysis, fmt: str = "table", *, digits: int = 3) -> str:
    """The analysis in ``fmt`` (one of FORMATS). CSV and JSON carry no notes: see ``footer``."""
    if fmt == "json":
        return json.dumps(analysis.to_records(), indent=2)
    if fmt == "csv":
        return analysis.cells.to_csv(index=False).rstrip("\n")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    header, body = _grid(analysis, fmt, digits)
    lines = {"table": _text, "markdown": _markdown, "latex": _latex}[fmt](analysis, header, body)
    prefix = "% " if fmt == "latex" else ""
    return "\n".join(lines + [""] + [prefix + line for line in footer(analysis)])


def footer(analysis: Analysis) -> list[str]:
    """What the table shows and how it was tested, then the design notes."""
    lines = [f"{analysis.metric}: mean (std) n={analysis.unit} per cell"]
    if analysis.baseline_factor is not None:
        strata = [f for f in analysis.factors if f != analysis.baseline_factor and f not in analysis.shared]
        within = f", compared within the same {', '.join(strata)}" if strata else ""
        tested = int(analysis.cells["p_value"].notna().sum())
        lines.append(f"baseline (\u2020): {analysis.baseline_factor}={format_level(analysis.baseline_level)}{within}")
        if tested:
            lines.append(f"test: {analysis.test_label}; correction: {analysis.correction} over {tested} "
                         f"comparison{'s' if tested > 1 else ''}; * or bold: significant at "
                         f"alpha={analysis.alpha:g} after correction")
        else:
            lines.append(f"test: {analysis.test_label}; no comparison could be tested (the notes below say why)")
        if analysis.correction != "none" and tested > 1:
            lines.append(f"confidence intervals: {(1 - analysis.alpha) * 100:g}% per comparison, not "
                         f"adjusted for multiplicity ({analysis.correction} decides significance only)")
    return lines + collapse_notes(analysis.notes)


# Remarks that name one cell each and can repeat for every cell (a one-repeat study has one row
# per cell): more than MAX_SAME of a kind become one line naming the first and counting the rest.
REPEATED_REMARKS = (": std and tests undefined", ": too few pairs for a test", ": too few rows for a test")
MAX_SAME = 3


def collapse_notes(notes: list[str]) -> list[str]:
    """``notes`` with each repeated remark (``REPEATED_REMARKS``) given once when it occurs
    more than ``MAX_SAME`` times, in the place of its first occurrence; other notes unchanged."""
    kind = lambda note: next((r for r in REPEATED_REMARKS if note.endswith(r)), None)  # noqa: E731
    counts = {r: sum(kind(n) == r for n in notes) for r in REPEATED_REMARKS}
    out, shown = [], set()
    for note in notes:
        remark = kind(note)
        if remark is None or counts[remark] <= MAX_SAME:
            out.append(note)
        elif remark not in shown:
            shown.add(remark)
            out.append(f"{note[:-len(remark)]} and {counts[remark] - 1} more cells{remark}")
    return out


def _grid(analysis: Analysis, fmt: str, digits: int) -> tuple[list[list[str]], list[list[str]]]:
    cells = analysis.cells
    row_levels = _levels(cells, analysis.rows)
    col_levels = _levels(cells, analysis.cols)
    lookup = {tuple(r[f] for f in analysis.factors): r for r in cells.to_dict("records")}
    body = []
    for rl in row_levels:
        texts = [_cell(lookup.get(rl + cl), fmt, digits) for cl in col_levels]
        body.append([format_level(v) for v in rl] + texts)
    header = [[format_level(cl[i]) for cl in col_levels] for i in range(len(analysis.cols))]
    return header, body


def _levels(cells: pd.DataFrame, factors: list[str]) -> list[tuple]:
    if not factors:
        return [()]
    # Only the combinations that occur, in sorted order (a full product would show empty columns).
    return [tuple(k) for k in cells[factors].drop_duplicates().sort_values(factors).itertuples(index=False)]


def _cell(record: dict | None, fmt: str, digits: int) -> str:
    if record is None:
        return "-"
    mean, std = _num(record["mean"], digits), _num(record["std"], digits)
    value = f"{mean} ({std})"
    significant = bool(record.get("significant")) if record.get("significant") is not None else False
    if significant and fmt == "markdown":
        value = f"**{value}**"
    elif significant and fmt == "latex":
        value = rf"\textbf{{{value}}}"
    text = f"{value} n={int(record['n'])}"
    if record.get("baseline"):
        text += r" $^\dagger$" if fmt == "latex" else " \u2020"
    elif significant and fmt == "table":
        text += " *"
    return text


def _num(value: float, digits: int) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _text(analysis: Analysis, header: list[list[str]], body: list[list[str]]) -> list[str]:
    first = analysis.rows or [""]
    pad = [] if analysis.rows else [""]
    ncols = len(body[0]) - len(analysis.rows)
    rows = [[""] * (len(first) - 1) + [name] + levels for name, levels in zip(analysis.cols, header)]
    rows.append(first + [""] * ncols)
    rows += [pad + b for b in body]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _column_titles(analysis: Analysis, header: list[list[str]]) -> list[str]:
    if not analysis.cols:
        return [analysis.metric]
    return [", ".join(f"{f}={lv}" for f, lv in zip(analysis.cols, levels)) for levels in zip(*header)]


def _markdown(analysis: Analysis, header: list[list[str]], body: list[list[str]]) -> list[str]:
    first = analysis.rows or [""]
    titles = first + _column_titles(analysis, header)
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join(["---"] * len(first) + ["---:"] * (len(titles) - len(first))) + "|"]
    lines += ["| " + " | ".join(([""] if not analysis.rows else []) + b) + " |" for b in body]
    return lines


def _latex(analysis: Analysis, header: list[list[str]], body: list[list[str]]) -> list[str]:
    first = analysis.rows or [""]
    titles = [_tex(t) for t in first + _column_titles(analysis, header)]
    spec = "l" * len(first) + "r" * (len(titles) - len(first))
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(titles) + r" \\", r"\midrule"]
    for b in body:
        row = ([""] if not analysis.rows else []) + b
        lines.append(" & ".join(_tex(c) if i < len(first) else c.replace("_", r"\_")
                                for i, c in enumerate(row)) + r" \\")
    return lines + [r"\bottomrule", r"\end{tabular}"]


def _tex(text: str) -> str:
    return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in text)

