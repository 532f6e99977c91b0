"""The table the orchestrator prints when a study finishes: read the study's rows and plan,
compare with the study's statistics defaults, render as text."""

from __future__ import annotations

import os

from synthmix.results.analysis import AUTO, DEFAULT_METRIC, analyse
from synthmix.results.store import read_results
from synthmix.results.tables import render



def summarise_study(root: str | os.PathLike, *, metric: str = DEFAULT_METRIC,
                    rows: list[str] | None = None, cols: list[str] | None = None,
                    baseline: str | dict | None = None, where: list[str] | tuple[str, ...] = (),
                    test: str = AUTO, correction: str = "holm", alpha: float = 0.05,
                    fmt: str = "table", digits: int = 3, storage: str | None = None) -> str:
    """Render the results table of the study at ``root`` (a study folder, URI, or name under
    ``storage``). Keyword arguments mirror ``synthmix results``; pass the study's
    ``statistics`` section as keywords (``baseline`` may be
    ``{synthetic: 0}``) to use its choices."""
    analysis = analyse(read_results(root, storage=storage), metric=metric, rows=rows, cols=cols,
                       baseline=baseline, where=where, test=test,
                       correction=correction, alpha=alpha)
    return render(analysis, fmt, digits=digits)
