"""Train-once generator sharing (rule 6): many trials may need one generator key at once.

A small coordinator actor (0 CPUs) hands out one lease per key. The trial holding the lease
trains the generator on Ray Train workers; every other trial that needs the key waits without
holding training resources (a trial itself reserves no CPU, see ``cells.py``) and polls the
artifact store. A lease is renewed by a heartbeat thread; if its holder dies, the lease expires
and the next waiting trial takes over, continuing from the generator's latest Ray Train
checkpoint. A finished artifact (written by temp-dir + rename) is never trained again, also
across resumed runs, because completion is read from the store, not from the actor.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

LEASE_SECONDS = 60.0
POLL_SECONDS = 2.0


class _Coordinator:
    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, owner: str) -> bool:
        holder = self._leases.get(key)
        now = time.monotonic()
        if holder is None or holder[0] == owner or holder[1] < now:
            self._leases[key] = (owner, now + LEASE_SECONDS)
            return True
        return False

    def renew(self, key: str, owner: str) -> None:
        if self._leases.get(key, (None,))[0] == owner:
            self._leases[key] = (owner, time.monotonic() + LEASE_SECONDS)

    def release(self, key: str, owner: str) -> None:
        if self._leases.get(key, (None,))[0] == owner:
            del self._leases[key]


def _actor_name(study_name: str) -> str:
    return f"synthmix-generators-{study_name}"


def start_coordinator(study_name: str):
    """Create the study's coordinator; the caller (the driver) keeps the handle for the whole
    run, since a non-detached actor dies with the last handle's owner."""
    import ray

    actor_cls = ray.remote(num_cpus=0)(_Coordinator)
    return actor_cls.options(name=_actor_name(study_name), namespace="synthmix",
                             get_if_exists=True).remote()


def coordinator(study_name: str):
    """The running coordinator of a study (created by the driver before fan-out)."""
    import ray

    return ray.get_actor(_actor_name(study_name), namespace="synthmix")


def ensure_generator(
    key: str,
    *,
    artifact_dir: Path,
    is_complete: Callable[[Path], bool],
    train: Callable[[], None],
    study_name: str,
    owner: str,
) -> dict[str, float | bool]:
    """Return once the generator for ``key`` exists, training it here only if no one else is.

    Returns timings: ``wait_s`` (spent waiting for another trial), ``train_s`` (spent training
    here) and ``trained_here``.
    """
    import ray

    actor = coordinator(study_name)
    waited = trained = 0.0
    while not is_complete(artifact_dir):
        if ray.get(actor.acquire.remote(key, owner)):
            start = time.monotonic()
            with _Heartbeat(actor, key, owner):
                try:
                    if not is_complete(artifact_dir):
                        train()
                finally:
                    ray.get(actor.release.remote(key, owner))
            trained += time.monotonic() - start
        else:
            time.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
    return {"wait_s": waited, "train_s": trained, "trained_here": trained > 0}


@contextlib.contextmanager
def lease_if_free(key: str, *, study_name: str, owner: str) -> Iterator[bool]:
    """The lease of ``key`` for the block if no one holds it, without waiting: yields whether
    it was taken (then renewed while the block runs and released after)."""
    import ray

    actor = coordinator(study_name)
    if not ray.get(actor.acquire.remote(key, owner)):
        yield False
        return
    try:
        with _Heartbeat(actor, key, owner):
            yield True
    finally:
        ray.get(actor.release.remote(key, owner))


class _Heartbeat:
    """Renews a lease every LEASE_SECONDS / 4 while the block runs."""

    def __init__(self, actor, key: str, owner: str):
        self._actor, self._key, self._owner = actor, key, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            self._actor.renew.remote(self._key, self._owner)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
