"""``synthmix results``: a study's (or any Parquet/CSV file's) results as a table of
``mean (std) n`` per cell, each cell tested against a baseline, optionally plotted."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="results table with significance tests, and plots",
                       description="Group results rows into cells (--rows x --cols), show mean (std) n "
                       "of --metric, and test each cell against --baseline within the same levels "
                       "of the other factors.")
    p.add_argument("source", help="study name (under --storage), study folder, folder of Parquet "
                   "files, one .parquet/.csv file, or a URI such as s3://bucket/study")
    p.add_argument("--storage", help="storage root for study names (default $SYNTHMIX_STORAGE or ./runs)")
    p.add_argument("--metric", default="dice_mean", help="metric column (default dice_mean)")
    p.add_argument("--rows", type=_names, help="row factors, comma-separated (default: the baseline factor)")
    p.add_argument("--cols", type=_names, help="column factors (default: every other factor that varies)")
    p.add_argument("--baseline", help="FACTOR=LEVEL every cell is compared with (default synthetic=0)")
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="filter, repeatable: 'architecture=unet', 'real_fraction<=0.5', 'synthetic in 0,0.5'")
    p.add_argument("--test", default="auto", help="auto (default), student, welch, paired, wilcoxon, corrected")
    p.add_argument("--correction", default="holm", choices=["holm", "bh", "none"],
                   help="multiple-comparison correction over the table (default holm)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--paper", action="store_true", help="the papers' analysis: unpaired two-tailed "
                   "Student t-test at 5%% against the baseline, no correction")
    p.add_argument("--n-train", type=float, help="training pool per resample, in subjects (corrected "
                   "test; default: column n_pool_subjects per row)")
    p.add_argument("--n-test", type=float, help="test subjects per resample (default: column n_test_subjects)")
    p.add_argument("--format", default="table", choices=["table", "markdown", "latex", "csv", "json"])
    p.add_argument("--digits", type=int, default=3, help="decimals shown (default 3)")
    p.add_argument("--plot", metavar="FILE.png", help="also write a plot")
    p.add_argument("--plot-kind", choices=["line", "box"],
                   help="line (default; box with --per-subject): metric vs real fraction with "
                   "confidence bands; box: box plots with not-significant brackets")
    p.add_argument("--per-subject", action="store_true", help="analyse the per-subject table "
                   "(results/subjects/): cells paired with their baseline by test subject")
    p.add_argument("--by", metavar="COLUMN", help="a study factor that leads the columns (e.g. generator: "
                   "one block per level, each against the shared baseline); with --per-subject: "
                   "stratify by a subject metadata column (age, lesion_load, ...)")
    p.add_argument("--bins", type=int, help="with --by: quantile bins of a numeric column (default 3)")
    p.add_argument("--stratify", metavar="COLUMN", help="001's secondary analysis (Table II): per cell, a "
                   "logistic regression on its segmentations' structure volumes of the unlabelled subjects "
                   "(evaluate: {unlabelled: true}) predicts COLUMN above its median; accuracy and AUC over "
                   "repeated stratified cross-validation, each cell tested against its baseline cell")
    p.add_argument("--cv-folds", type=int, default=5, help="with --stratify: folds (default 5, as 001)")
    p.add_argument("--cv-repeats", type=int, default=100, help="with --stratify: repeats (default 100, as 001)")
    p.add_argument("--x", help="x-axis factor of the plot (default real_fraction or real_count)")
    p.add_argument("--tune", action="store_true", help="the tuning stage's trials instead, best first, "
                   "and the winner frozen into the grid (--format table, markdown, csv or json)")
    p.set_defaults(handler=_results)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _results(args: argparse.Namespace) -> int:
    from synthmix.results import analyse, read_results
    from synthmix.results.analysis import KNOWN_FACTORS
    from synthmix.results.store import ResultsError, read_subject_results
    from synthmix.results.subjects import analyse_subjects
    from synthmix.results.tables import footer, render

    if args.tune:
        from synthmix.results.tuning import read_tuning, render_trials

        print(render_trials(read_tuning(args.source, storage=args.storage), args.format, digits=args.digits + 1))
        return 0

    if args.stratify:
        return _secondary(args)
    test, correction, alpha = ("student", "none", 0.05) if args.paper else (args.test, args.correction, args.alpha)
    if args.bins and not args.per_subject:
        raise ResultsError("--bins stratifies per-subject results by --by: add --per-subject")
    common = dict(metric=args.metric, rows=args.rows, cols=args.cols, baseline=args.baseline,
                  where=args.where, test=test, correction=correction, alpha=alpha)
    if args.per_subject:
        analysis = analyse_subjects(read_subject_results(args.source, storage=args.storage), **common,
                                    by=args.by, bins=args.bins)
    else:
        results = read_results(args.source, storage=args.storage)
        factors = results.factors or list(KNOWN_FACTORS)
        if args.by and args.by not in factors:
            raise ResultsError(f"--by {args.by!r} is not a factor of {args.source} ({', '.join(factors)}); to "
                               "stratify by a subject metadata column, add --per-subject")
        analysis = analyse(results, **common, n_train=args.n_train, n_test=args.n_test, by=args.by)
    if args.plot:  # before the table, so a plot error leaves no partial output
        from synthmix.results.plots import plot

        kind = args.plot_kind or ("box" if args.per_subject else "line")
        print(f"wrote {plot(analysis, args.plot, kind=kind, x=args.x)}", file=sys.stderr)
    print(render(analysis, args.format, digits=args.digits))
    if args.format in ("csv", "json"):  # keep stdout machine-readable
        for line in footer(analysis):
            print(line, file=sys.stderr)
    return 0


def _secondary(args: argparse.Namespace) -> int:
    from synthmix.results.secondary import render_secondary, secondary_analysis
    from synthmix.results.store import ResultsError, read_unlabelled_results

    if args.cv_folds < 2 or args.cv_repeats < 1:
        raise ResultsError("--cv-folds must be at least 2 and --cv-repeats at least 1")
    cells, footer = secondary_analysis(read_unlabelled_results(args.source, storage=args.storage), args.stratify,
                                       baseline=args.baseline, folds=args.cv_folds, repeats=args.cv_repeats,
                                       correction=args.correction, alpha=args.alpha)
    print(render_secondary(cells, footer, args.format if args.format != "latex" else "table", digits=args.digits))
    if args.format in ("csv", "json"):
        for line in footer:
            print(line, file=sys.stderr)
    return 0
