"""The study's storage root: where plans, splits, artifacts, results rows and errors live.

Layout under ``<storage>/<study name>/``::

    study.yaml                 the validated study, as run
    plan.json                  cells (factor levels, fold, repeat) and generator keys
    splits.json                the subject splits (written once, reloaded, checked on load)
    data/                      phantom data and the preprocessed cache (local storage only)
    artifacts/generators/KEY/  trained generators (checkpoint, pool, quality, samples.png)
    results/CELL_ID.parquet    one row per finished cell, written atomically
    errors/CELL_ID.json        the last error of a cell that failed (removed once it succeeds)
    choices/KEY.json           a model selection (generator.choose): every candidate's scores, the chosen one
    ray/                       Ray Tune experiment state (ray/tune) and Ray Train runs (ray/train)

The storage root is a local folder or any ``pyarrow.fs`` URI (``s3://bucket/prefix``,
``gs://...``). Locally every write goes through a temp file and ``os.replace``; in object
storage a whole object is written at once (one PUT, or a multipart upload that becomes visible
only when completed), so a reader never sees half a file either way.

With a URI, credentials and the endpoint come from the environment only (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``
for S3-compatible services, an instance role on a cluster): a URI carrying credentials is
refused, because URIs travel into trial configs that Ray Tune writes to storage.

Remote stores keep what is read often or memory-mapped on the local disk of each node, under
``$SYNTHMIX_CACHE`` (default ``~/.cache/synthmix``): the phantom data, the preprocessed cache
and downloaded copies of generator artifacts. A generator is trained into that local folder and
uploaded file by file, its ``_COMPLETE.json`` marker last; a copy is used only when its marker
matches the store's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import traceback
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union
from urllib.parse import parse_qsl, urlsplit

DEFAULT_STORAGE_ENV = "SYNTHMIX_STORAGE"
CACHE_ENV = "SYNTHMIX_CACHE"
COMPLETE_MARKER = "_COMPLETE.json"
#: Where the storage is and how to reach it; not secret, so a driver forwards them to the
#: workers of a cluster it joins. Credentials are never forwarded nor written anywhere.
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET_QUERY_WORDS = ("key", "secret", "token", "password", "credential")


def is_uri(location: object) -> bool:
    return "://" in str(location)


def default_storage() -> Union[Path, str]:
    """``$SYNTHMIX_STORAGE`` (a folder or URI) or ``./runs``."""
    value = os.environ.get(DEFAULT_STORAGE_ENV, "runs")
    return value if is_uri(value) else Path(value).absolute()


def local_cache_root() -> Path:
    """Per-node cache of a remote store: ``$SYNTHMIX_CACHE`` or ``~/.cache/synthmix``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synthmix").expanduser().absolute()


class RemotePath:
    """A file or folder in a ``pyarrow.fs`` filesystem with the few ``pathlib.Path`` methods the
    store uses, so that code reads the same for a local and a remote store (pyarrow.fs has no
    path object of its own). ``str()`` gives the URI back, with the original query string."""

    def __init__(self, fs, path: str, scheme: str, query: str = ""):
        self.fs, self.path, self.scheme, self.query = fs, path.rstrip("/"), scheme, query

    @classmethod
    def from_uri(cls, uri: str) -> "RemotePath":
        import pyarrow as pa
        import pyarrow.fs as pafs

        from synthmix.errors import SynthmixError

        check_uri(uri)
        parts = urlsplit(uri)
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise SynthmixError(f"storage {uri!r}: cannot open ({err})") from None
        return cls(fs, path, parts.scheme, parts.query)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str) -> "RemotePath":
        return RemotePath(self.fs, posixpath.join(self.path, str(name)), self.scheme, self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, posixpath.dirname(self.path), self.scheme, self.query)

    def _type(self):
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._type() == pafs.FileType.Directory

    def iterdir(self) -> Iterator["RemotePath"]:
        """Direct children; nothing for a missing folder."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        for info in self.fs.get_file_info(selector):
            yield RemotePath(self.fs, info.path, self.scheme, self.query)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """One whole object: S3 and GCS show it only once the upload is complete."""
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self.fs.delete_file(self.path)

    def upload(self, local: Path) -> None:
        self.write_bytes(Path(local).read_bytes())

    def download(self, local: Path) -> None:
        Path(local).write_bytes(self.read_bytes())


StoragePath = Union[Path, RemotePath]


def check_uri(uri: str) -> None:
    """Refuse a storage URI that carries credentials: it would be written into Tune's trial
    configs, logs and the study's files. Credentials belong in the environment."""
    from synthmix.errors import SynthmixError

    parts = urlsplit(uri)
    secret_params = [k for k, _ in parse_qsl(parts.query) if any(w in k.lower() for w in _SECRET_QUERY_WORDS)]
    if "@" in parts.netloc or secret_params:
        raise SynthmixError(
            f"storage URI {parts.scheme}://{parts.hostname or ''}/...: credentials in the URI are refused "
            "(they would be written into the study's files); set them in the environment instead "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or an instance role; AWS_ENDPOINT_URL for "
            "an S3-compatible endpoint)")


def storage_path(location: Union[str, os.PathLike]) -> StoragePath:
    """A local folder (absolute ``Path``) or a ``RemotePath`` for a URI."""
    text = os.fspath(location) if not isinstance(location, RemotePath) else str(location)
    if is_uri(text) and not text.startswith("file://"):
        return RemotePath.from_uri(text)
    return Path(text.removeprefix("file://")).absolute()


def atomic_write_bytes(path: StoragePath, data: bytes) -> None:
    if isinstance(path, RemotePath):
        path.write_bytes(data)  # one object: it appears whole or not at all
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: StoragePath, obj: object) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


@dataclass(frozen=True)
class StudyStore:
    """Paths of one study under a storage root (a local folder or a ``RemotePath``)."""

    root: StoragePath

    @classmethod
    def open(cls, name: str, storage: Union[str, os.PathLike, None] = None) -> "StudyStore":
        return cls(storage_path(storage or default_storage()) / name)

    @classmethod
    def at(cls, root: Union[str, os.PathLike]) -> "StudyStore":
        """The store whose root is ``str(store.root)`` (what trial configs carry)."""
        return cls(storage_path(root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def remote(self) -> bool:
        return isinstance(self.root, RemotePath)

    @property
    def storage(self) -> str:
        """The storage root the study lives under, as a path or URI."""
        return str(self.root.parent)

    study_file = property(lambda self: self.root / "study.yaml")
    plan_file = property(lambda self: self.root / "plan.json")
    splits_file = property(lambda self: self.root / "splits.json")
    results_dir = property(lambda self: self.root / "results")
    errors_dir = property(lambda self: self.root / "errors")
    ray_dir = property(lambda self: self.root / "ray")
    choices_dir = property(lambda self: self.root / "choices")

    def choice_file(self, key: str) -> StoragePath:
        return self.choices_dir / f"{key}.json"

    @property
    def data_dir(self) -> Path:
        """Phantom data and preprocessed cache: under the store when it is local, else on this
        node's disk (evaluated where it is used, so each node has its own)."""
        return local_cache_root() / self.name / "data" if self.remote else self.root / "data"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def ray_storage(self, kind: str) -> str:
        """``storage_path`` for Ray Tune (``kind="tune"``) or Ray Train (``"train"``): a local
        folder or a URI, which Ray opens with ``pyarrow.fs`` and the same environment."""
        return str(self.ray_dir / kind)

    # --- artifacts: trained generators and the pools drawn from them --------------------------
    # kind "generators" or "pools"; a folder is complete when its files are all there (local)
    # or its marker is in the store (remote: uploaded last).

    def artifact_dir(self, kind: str, key: str) -> StoragePath:
        return self.root / "artifacts" / kind / key

    def artifact_workdir(self, kind: str, key: str) -> Path:
        """Where an artifact is written and read on this node: the store's folder when local,
        else this node's cached copy."""
        if not self.remote:
            return self.artifact_dir(kind, key)
        return local_cache_root() / self.name / kind / key

    def artifact_complete(self, kind: str, key: str) -> bool:
        if not self.remote:
            return _LOCAL_COMPLETE[kind](self.artifact_dir(kind, key))
        return (self.artifact_dir(kind, key) / COMPLETE_MARKER).is_file()

    def publish_artifact(self, kind: str, key: str, local: Path) -> None:
        """Upload a finished artifact folder, the marker (names, sizes, digests) last, and keep
        the same marker beside the local copy. No-op for a local store (written in place)."""
        if not self.remote:
            return
        target = self.artifact_dir(kind, key)
        files = sorted(p for p in Path(local).iterdir() if p.is_file() and p.name != COMPLETE_MARKER)
        for path in files:
            (target / path.name).upload(path)
        marker = json.dumps({"key": key, "files": {p.name: _digest(p) for p in files}}, sort_keys=True)
        (target / COMPLETE_MARKER).write_bytes(marker.encode())
        (Path(local) / COMPLETE_MARKER).write_text(marker)

    def local_artifact(self, kind: str, key: str) -> Path:
        """A complete copy of the artifact on this node's disk: the store's folder when local;
        else the cached copy, downloaded first (temp folder + rename) unless its marker equals
        the store's."""
        if not self.remote:
            return self.artifact_dir(kind, key)
        from synthmix.errors import SynthmixError

        source, local = self.artifact_dir(kind, key), self.artifact_workdir(kind, key)
        marker_file = source / COMPLETE_MARKER
        if not marker_file.is_file():
            raise SynthmixError(f"{source}: {kind[:-1]} {key} is not complete in the store (no {COMPLETE_MARKER})")
        marker = marker_file.read_text()
        cached = local / COMPLETE_MARKER
        if cached.is_file() and cached.read_text() == marker:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=local.parent))
        try:
            for name in json.loads(marker)["files"]:
                (source / name).download(tmp / name)
            (tmp / COMPLETE_MARKER).write_text(marker)
            _replace_dir(tmp, local, marker)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def generator_dir(self, key: str) -> StoragePath:
        return self.artifact_dir("generators", key)

    def generator_complete(self, key: str) -> bool:
        return self.artifact_complete("generators", key)

    def generator_quality(self, key: str) -> dict:
        from synthmix.trainers.generators.artifact import QUALITY_FILE

        return json.loads((self.generator_dir(key) / QUALITY_FILE).read_text())

    def pool_info(self, key: str) -> dict:
        from synthmix.trainers.generators.pools import POOL_INFO

        return json.loads((self.artifact_dir("pools", key) / POOL_INFO).read_text())

    # --- files --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def local_copy(self, path: StoragePath) -> Iterator[Path]:
        """A local file with the contents of ``path`` (itself when local), for readers that
        take local paths."""
        if isinstance(path, Path):
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="synthmix-") as folder:
            local = Path(folder) / path.name
            path.download(local)
            yield local

    @contextlib.contextmanager
    def staged(self, path: StoragePath) -> Iterator[Path]:
        """A local path for a writer that takes local paths; uploaded to ``path`` afterwards
        (itself when local: the writer must then be atomic on its own)."""
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="synthmix-") as folder:
            local = Path(folder) / path.name
            yield local
            path.upload(local)

    # --- rows and errors ----------------------------------------------------------------------

    def row_file(self, cell_id: str) -> StoragePath:
        return self.results_dir / f"{cell_id}.parquet"

    def error_file(self, cell_id: str) -> StoragePath:
        return self.errors_dir / f"{cell_id}.json"

    def finished_cells(self) -> set[str]:
        return {p.stem for p in _children(self.results_dir, ".parquet")}

    def errors(self) -> dict[str, dict]:
        return {p.stem: json.loads(p.read_text()) for p in sorted(_children(self.errors_dir, ".json"), key=str)}

    def record_error(self, cell_id: str, error: BaseException) -> None:
        """Keep the cell's last error: one line for status, the full traceback for debugging."""
        text = f"{type(error).__name__}: {error}"
        trace = "".join(traceback.format_exception(error))
        atomic_write_json(self.error_file(cell_id), {"cell_id": cell_id, "error": text, "traceback": trace})

    def clear_error(self, cell_id: str) -> None:
        self.error_file(cell_id).unlink(missing_ok=True)


def _generator_complete(path: Path) -> bool:
    from synthmix.trainers.generators.artifact import is_complete

    return is_complete(path)


def _pool_complete(path: Path) -> bool:
    from synthmix.trainers.generators.pools import is_complete

    return is_complete(path)


_LOCAL_COMPLETE = {"generators": _generator_complete, "pools": _pool_complete}


def _children(folder: StoragePath, suffix: str) -> list[StoragePath]:
    """Files of ``folder`` ending in ``suffix``, skipping hidden temp files; none if missing."""
    if isinstance(folder, Path) and not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")]


def _digest(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _replace_dir(tmp: Path, final: Path, marker: str) -> None:
    """Rename ``tmp`` to ``final``. A ``final`` with the same marker (another process on this
    node won the race) is kept; an outdated one is moved aside first."""
    def current() -> bool:
        return (final / COMPLETE_MARKER).is_file() and (final / COMPLETE_MARKER).read_text() == marker

    if final.exists() and not current():
        aside = final.with_name(f".{final.name}.old-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not current():
            raise
