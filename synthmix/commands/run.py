"""``synthmix run`` and ``synthmix resume``: fan a study out on Ray, then print its table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a study (default: the quickstart preset on phantom data)")
    run.add_argument("study", nargs="?", help="study YAML or preset name (default: quickstart)")
    _common(run)
    run.add_argument("--name", help="name under the storage root (default: the study's name)")
    run.set_defaults(handler=_run)

    resume = sub.add_parser("resume", help="continue a study: retry failed and unfinished cells")
    resume.add_argument("name", help="the study's name under the storage root")
    _common(resume)
    resume.set_defaults(handler=_resume)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="storage root: a folder or a URI such as s3://bucket/prefix "
                   "(default: $SYNTHMIX_STORAGE or ./runs)")
    p.add_argument("--address", help="join a running Ray cluster ('auto'); default: start a local Ray")


def _run(args: argparse.Namespace) -> int:
    from synthmix.orchestrator.study_run import run_study

    store = run_study(args.study, storage=args.storage, name=args.name, address=args.address)
    return _table(store)


def _resume(args: argparse.Namespace) -> int:
    from synthmix.orchestrator.study_run import resume_study

    store = resume_study(args.name, storage=args.storage, address=args.address)
    return _table(store)


def _table(store) -> int:
    """The closing table, with the study's own statistics choices."""
    from synthmix.results import summarise_study
    from synthmix.search_spaces.schema import load_study

    with store.local_copy(store.study_file) as study_file:  # the study may live in object storage
        stats = load_study(study_file).statistics
    print(summarise_study(str(store.root), test=stats.test, correction=stats.correction, alpha=stats.alpha,
                          baseline=stats.baseline))
    return 0
