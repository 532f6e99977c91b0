"""``synthmix report``: a self-contained HTML page of a study's results, plots and generators."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write an HTML report: tables, tests, plots, generator quality")
    p.add_argument("source", help="study name (under --storage), study folder, or URI")
    p.add_argument("--storage", help="storage root for study names (default $SYNTHMIX_STORAGE or ./runs)")
    p.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    p.add_argument("--metric", default="dice_mean")
    p.add_argument("--test", default="auto", help="auto, student, welch, paired, wilcoxon, corrected")
    p.add_argument("--correction", default="holm", choices=["holm", "bh", "none"])
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--baseline", help="FACTOR=LEVEL (default: the study's baseline)")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from synthmix.results.report import write_report

    path = write_report(args.source, args.out, storage=args.storage, metric=args.metric, test=args.test,
                        correction=args.correction, alpha=args.alpha, baseline=args.baseline)
    print(f"wrote {path}")
    return 0
