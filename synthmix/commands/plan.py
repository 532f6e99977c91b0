"""``synthmix plan``: validate a study and show its grid, generator trainings, resources and a
compute estimate, without launching anything."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="validate a study and show its cells, generator trainings and cost")
    p.add_argument("study", nargs="?", default="quickstart",
                   help="study YAML file or preset name (default: quickstart)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--data-root", type=Path, default=None,
                   help="where phantom data are written (default: a temporary folder)")
    p.set_defaults(handler=_plan)


def _plan(args: argparse.Namespace) -> int:
    from synthmix.search_spaces import load_study
    from synthmix.search_spaces.expand import expand_study, resolve_dataset

    study = load_study(args.study)  # a StudyError here exits non-zero before anything else
    with tempfile.TemporaryDirectory(prefix="synthmix-plan-") as tmp:
        manifest = resolve_dataset(study, args.data_root or Path(tmp))
        plan = expand_study(study, manifest)
        print(plan.to_json() if args.format == "json" else plan.render())
    return 0
