"""The progress line of ``synthmix run`` and ``synthmix tune``: cells (or trials) done /
running / failed and an ETA."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressCallback(Callback):
    """Prints one line whenever a cell (a trial) starts, finishes or fails."""

    def __init__(self, total: int, quiet: bool = False, noun: str = "cells"):
        self.total, self.quiet, self.noun = total, quiet, noun
        self.done = self.failed = self.running = 0
        self.start = time.monotonic()

    def _print(self) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        finished = self.done + self.failed
        eta = "?" if not self.done else _fmt(elapsed / finished * (self.total - finished))
        print(f"[{_fmt(elapsed)}] {self.noun}: {self.done}/{self.total} done, {self.running} running, "
              f"{self.failed} failed, ETA {eta}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running -= 1
        self.done += 1
        self._print()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running -= 1
        self.failed += 1
        self._print()


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
