"""The ``synthmix`` command. Each subcommand lives in ``synthmix/commands/<name>.py`` as a
``register(subparsers)`` function that adds its parser and handler; handlers import the library
lazily so that ``--help`` stays fast (importing Ray and torch takes seconds)."""

from __future__ import annotations

import argparse
import importlib
import sys

from synthmix import __version__
from synthmix.errors import SynthmixError

# Order is the order of `synthmix --help`.
COMMANDS = ["plan", "tune", "run", "status", "results", "report", "data", "sample", "spaces"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthmix",
        description="Does adding GAN-generated image+label pairs to the training data improve "
        "a segmentation network? Describe the grid in YAML, run it on Ray, query the results.",
    )
    parser.add_argument("--version", action="version", version=f"synthmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"synthmix.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SynthmixError as err:
        print(f"synthmix: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
