"""``synthmix spaces``: the preset studies shipped with synthmix (list them, print one)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spaces", help="list the preset studies or print one")
    spaces = p.add_subparsers(dest="spaces_command", metavar="SPACES_COMMAND", required=True)
    spaces.add_parser("list", help="preset names and what each runs").set_defaults(handler=_list)
    show = spaces.add_parser("show", help="print a preset's YAML, header included")
    show.add_argument("name")
    show.set_defaults(handler=_show)


def _list(args: argparse.Namespace) -> int:
    from synthmix.search_spaces.presets import preset_names, preset_summary

    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {preset_summary(name)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from synthmix.search_spaces.presets import preset_text

    print(preset_text(args.name), end="")
    return 0
