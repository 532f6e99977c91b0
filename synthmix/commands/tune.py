"""``synthmix tune``: run a study's tuning stage (its ``tune:`` section) and print its trials."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="run a study's tuning stage (Optuna on Ray Tune, validation data only)",
                       description="Search the study's tune: space on Ray Tune with Optuna, each trial scored "
                       "on the validation subjects of tune.on (never a test subject), and freeze the winner "
                       "into the study's plan. A killed search resumes where it stopped; 'synthmix run' then "
                       "runs the grid with the winner.")
    p.add_argument("study", help="study YAML or preset name")
    p.add_argument("--storage", help="storage root: a folder or a URI such as s3://bucket/prefix "
                   "(default: $SYNTHMIX_STORAGE or ./runs)")
    p.add_argument("--name", help="name under the storage root (default: the study's name)")
    p.add_argument("--address", help="join a running Ray cluster ('auto'); default: start a local Ray")
    p.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from synthmix.orchestrator.tuning import tune_study
    from synthmix.results.tuning import read_tuning, render_trials

    store, _ = tune_study(args.study, storage=args.storage, name=args.name, address=args.address)
    print(render_trials(read_tuning(str(store.root))))
    return 0
