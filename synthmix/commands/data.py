"""``synthmix data``: make the phantom dataset, preview subject splits, inspect a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="phantom data, subject splits, dataset inspection")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    p = data_sub.add_parser("phantom", help="write the built-in brain-like phantom dataset (NIfTI + manifest)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--subjects", type=int, default=20, help="labelled subjects (default 20)")
    p.add_argument("--size", type=int, default=64, help="in-plane size in voxels (default 64)")
    p.add_argument("--classes", type=int, default=4,
                   help="label classes incl. background: 2..5, or 7 (BraTS-like, 004: necrotic core, oedema, "
                   "enhancing rim, white matter, grey matter, CSF) (default 4)")
    p.add_argument("--unlabelled", type=int, default=0, help="extra subjects without labels (GANsfer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--age", type=_floats, metavar="LOW,HIGH",
                   help="age-covariate range of the labelled subjects, within 20,90 (default 20,90)")
    p.add_argument("--unlabelled-age", type=_floats, metavar="LOW,HIGH",
                   help="age range of the unlabelled subjects (default: --age); older ones have more "
                   "lesions and larger ventricles (001's unlabelled pool)")
    p.add_argument("--truth", action="store_true", help="also write the unlabelled subjects' label maps "
                   "(labelled false: never trained on; scored by evaluate: {unlabelled: true})")
    p.set_defaults(handler=_phantom)

    s = data_sub.add_parser("split", help="print the subject splits a study would use")
    s.add_argument("manifest", type=Path, help="manifest CSV/Parquet, or a folder holding manifest.csv")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--folds", type=int, help="k-fold cross-validation")
    how.add_argument("--test", type=float, help="test proportion (with --val)")
    s.add_argument("--val", type=float, help="validation proportion: of the non-test subjects with --folds "
                   "(default 0.2), of all labelled subjects with --test (required)")
    amount = s.add_mutually_exclusive_group()
    amount.add_argument("--fractions", type=_floats, help="nested real-data fractions, e.g. 0.1,0.5,1")
    amount.add_argument("--counts", type=_ints, help="nested labelled-subject counts, e.g. 1,3,6,12")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["json", "table"], default="table")
    s.set_defaults(handler=_split)

    i = data_sub.add_parser("inspect", help="subjects, shapes, spacing, intensities, classes, problems")
    i.add_argument("path", type=Path, help="dataset folder or manifest file")
    i.set_defaults(handler=_inspect)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _phantom(args: argparse.Namespace) -> int:
    from synthmix.datasets.inspect import inspect_dataset
    from synthmix.datasets.phantom import write_phantom_dataset

    manifest = write_phantom_dataset(args.out, subjects=args.subjects, size=args.size,
                                     classes=args.classes, unlabelled=args.unlabelled, seed=args.seed,
                                     age=args.age, unlabelled_age=args.unlabelled_age, truth=args.truth)
    print(f"wrote {manifest}")
    print(inspect_dataset(manifest).render())
    return 0


def _split(args: argparse.Namespace) -> int:
    from synthmix.datasets.manifest import read_manifest
    from synthmix.datasets.splits import SplitSpec, build_splits

    manifest = read_manifest(args.manifest)
    spec = SplitSpec(folds=args.folds, test=args.test, val=args.val, fractions=args.fractions,
                     counts=args.counts, repeats=args.repeats, seed=args.seed)
    plan = build_splits(manifest.labelled_ids, spec, unlabelled_ids=manifest.unlabelled_ids,
                        groups=manifest.groups)
    if args.format == "json":
        print(json.dumps(plan.to_records(), indent=2))
    else:
        print(plan.render())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from synthmix.datasets.inspect import inspect_dataset

    report = inspect_dataset(args.path)
    print(report.render())
    return 1 if report.problems else 0
