"""Key checks shared by the families' config builders: unknown keys named, and keys that moved
out of a family's config (to ``generator.pool`` / ``generator.quality`` or the study's seed)
named with where they went."""

from __future__ import annotations

import dataclasses

MOVED = {"pool_size": "generator.pool.size", "quality_samples": "generator.quality.samples",
         "seed": "the study's seed (each generator derives its own)"}


def option_key_problems(cls: type, d: dict, *, family: str) -> list[str]:
    """Problems with the keys of ``d`` as options of the config dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    problems = [f"{k}: moved to {MOVED[k]}" for k in d if k in MOVED]
    problems += [f"{k}: unknown {family} option (known: {', '.join(sorted(known))})"
                 for k in sorted(set(d) - known - set(MOVED))]
    return problems
