"""``synthmix status``: cells done / failed (with their error) / pending, generators trained."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="cells done, failed and pending; generators trained")
    p.add_argument("name", help="the study's name under the storage root")
    p.add_argument("--storage", help="storage root: a folder or a URI such as s3://bucket/prefix "
                   "(default: $SYNTHMIX_STORAGE or ./runs)")
    p.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from synthmix.orchestrator.status import study_status

    status = study_status(args.name, storage=args.storage)
    print(status.render())
    return 1 if status.failed else 0
