"""Studies stored in object storage, against a real S3 protocol server (moto in server mode on
loopback): the store's files and generator artifacts round-trip through S3, a tiny study runs
with ``--storage s3://...``, is SIGKILLed mid-grid and resumed, and a fresh process that knows
only the URI prints the same results table as a local copy of the same study. Nothing written
under the storage root contains a credential that was in the environment."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from synthmix.errors import SynthmixError
from synthmix.orchestrator.store import COMPLETE_MARKER, RemotePath, StudyStore, atomic_write_bytes, storage_path
from tiny_study import tiny_study_yaml

from moto import server as moto_server  # noqa: E402 (a declared test dependency: fail, never skip)

BUCKET = "synthmix-test"
# Distinctive fake credentials: the scan below looks for these exact values.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "AKIASYNTHMIXTEST0001",
    "AWS_SECRET_ACCESS_KEY": f"synthmix-secret-{uuid.uuid4().hex}",
    "AWS_SESSION_TOKEN": f"synthmix-token-{uuid.uuid4().hex}",
}

# The end-to-end tests' tiny study, cut to 2 cells sharing 1 generator.
STUDY = tiny_study_yaml(real_fractions="[1.0]")


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory):
    """A moto S3 server on a free loopback port with one bucket; yields the environment a
    process needs to use it (fake credentials, endpoint override, a local cache folder)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "SYNTHMIX_CACHE": str(tmp_path_factory.mktemp("node-cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # As synthmix and Ray open storage: from a URI, which makes pyarrow read the endpoint
        # override from AWS_ENDPOINT_URL (its S3FileSystem constructor alone does not).
        fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}?allow_bucket_creation=true")
        fs.create_dir(BUCKET)
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _s3() -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(f"s3://{BUCKET}")[0]


def _objects(prefix: str) -> list[str]:
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    return sorted(i.path for i in _s3().get_file_info(selector) if i.type == pafs.FileType.File)


# --- the store on S3, without Ray ----------------------------------------------------------------


def test_store_files_round_trip_through_s3(s3_env) -> None:
    store = StudyStore.open("unit", f"s3://{BUCKET}/store-unit")
    assert store.remote and isinstance(store.root, RemotePath)
    assert str(store.root) == f"s3://{BUCKET}/store-unit/unit" and store.storage == f"s3://{BUCKET}/store-unit"
    assert StudyStore.at(str(store.root)) == store  # what a trial config carries rebuilds the store
    assert store.finished_cells() == set() and store.errors() == {}

    atomic_write_bytes(store.row_file("c1"), b"row 1")
    atomic_write_bytes(store.row_file("c2"), b"row 2")
    assert store.finished_cells() == {"c1", "c2"}
    assert store.row_file("c2").read_bytes() == b"row 2"
    store.record_error("c3", ValueError("bad\nsecond line"))
    error = store.errors()["c3"]
    assert error["cell_id"] == "c3" and error["error"] == "ValueError: bad\nsecond line"
    assert error["traceback"].startswith("ValueError: bad")
    store.clear_error("c3")
    store.clear_error("c3")  # already gone: no error
    assert store.errors() == {}
    assert _objects("store-unit/unit") == [f"{BUCKET}/store-unit/unit/results/c1.parquet",
                                           f"{BUCKET}/store-unit/unit/results/c2.parquet"]
    # Node-local data stays off the bucket, under $SYNTHMIX_CACHE.
    assert store.cache_dir == Path(s3_env["SYNTHMIX_CACHE"]) / "unit" / "data" / "cache"

    with store.staged(store.splits_file) as local:
        local.write_text('{"splits": []}')
    with store.local_copy(store.splits_file) as local:
        assert json.loads(local.read_text()) == {"splits": []}


def test_generator_is_published_and_cached_by_its_marker(s3_env, tmp_path: Path) -> None:
    store = StudyStore.open("gens", f"s3://{BUCKET}/store-unit")
    trained = tmp_path / "trained"
    trained.mkdir()
    for name, data in {"weights.pt": b"weights-1", "quality.json": b'{"swd": 0.5}'}.items():
        (trained / name).write_bytes(data)
    assert not store.generator_complete("k1")
    with pytest.raises(SynthmixError, match="not complete"):
        store.local_artifact("generators", "k1")

    store.publish_artifact("generators", "k1", trained)
    assert store.generator_complete("k1") and store.generator_quality("k1") == {"swd": 0.5}
    marker = json.loads((store.generator_dir("k1") / COMPLETE_MARKER).read_text())
    assert sorted(marker["files"]) == ["quality.json", "weights.pt"]

    local = store.local_artifact("generators", "k1")
    assert local.parent == Path(s3_env["SYNTHMIX_CACHE"]) / "gens" / "generators"
    assert (local / "weights.pt").read_bytes() == b"weights-1"
    assert store.local_artifact("generators", "k1") == local  # the cached copy is reused ...
    (store.generator_dir("k1") / "weights.pt").write_bytes(b"weights-2")
    assert (local / "weights.pt").read_bytes() == b"weights-1"  # ... while the marker matches
    (trained / "weights.pt").write_bytes(b"weights-2")
    store.publish_artifact("generators", "k1", trained)  # a new marker: the copy is replaced
    assert (store.local_artifact("generators", "k1") / "weights.pt").read_bytes() == b"weights-2"


@pytest.mark.parametrize("uri", ["s3://AKIAX:hunter2@bucket/prefix", "s3://bucket/prefix?secret_key=hunter2",
                                 "s3://bucket/prefix?access_key=AKIAX&region=us-east-1"])
def test_a_storage_uri_with_credentials_is_refused(uri: str) -> None:
    with pytest.raises(SynthmixError, match="credentials in the URI are refused") as err:
        storage_path(uri)
    assert "hunter2" not in str(err.value) and "AKIAX" not in str(err.value)


def test_local_storage_stays_a_local_folder(tmp_path: Path) -> None:
    store = StudyStore.open("loc", tmp_path)
    assert not store.remote and store.root == tmp_path / "loc" and store.data_dir == tmp_path / "loc" / "data"


# --- a study on S3, end to end through Ray --------------------------------------------------------


def _synthmix(*args: str, cwd: Path) -> subprocess.Popen:
    # The environment carries the S3 settings (set by the fixture) and nothing else synthmix-specific.
    env = {k: v for k, v in os.environ.items() if k != "SYNTHMIX_STORAGE"}
    return subprocess.Popen([sys.executable, "-m", "synthmix.cli", *args], cwd=cwd,
                            env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output
    return output


def _stdout_of(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "SYNTHMIX_STORAGE"}
    done = subprocess.run([sys.executable, "-m", "synthmix.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_study_on_s3_is_killed_resumed_and_queried_from_anywhere(s3_env, tmp_path: Path) -> None:
    uri = f"s3://{BUCKET}/studies"
    study = tmp_path / "tiny.yaml"
    study.write_text(STUDY)
    store = StudyStore.open("tiny", uri)

    # Run, SIGKILL the driver as soon as one row is in the bucket, resume.
    driver = _synthmix("run", str(study), "--storage", uri, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not store.finished_cells() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(1)
    assert store.finished_cells(), driver.communicate()[0] if driver.poll() is not None else "no row in 300 s"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the embedded Ray notices its driver is gone
    before = {c: store.row_file(c).read_bytes() for c in store.finished_cells()}
    resumed = _finish(_synthmix("resume", "tiny", "--storage", uri, cwd=tmp_path))
    assert "1 already done" in resumed or "2 already done" in resumed, resumed

    # One row per cell, finished rows untouched, the generator trained once and published whole.
    plan = json.loads(store.plan_file.read_text())
    cell_ids = {c["cell_id"] for c in plan["cells"]}
    assert len(cell_ids) == 2 and store.finished_cells() == cell_ids
    assert all(store.row_file(c).read_bytes() == data for c, data in before.items())
    (key,) = [job["key"] for job in plan["generator_jobs"]]
    assert store.generator_complete(key)
    assert [p.name for p in (store.ray_dir / "train").iterdir() if p.name.startswith("generator-")] == [
        f"generator-{key}"]
    tune_runs = [p.name for p in (store.ray_dir / "tune").iterdir()]
    assert tune_runs and all(name.startswith("attempt-") for name in tune_runs)  # Tune state in S3

    # A fresh process that knows only the URI: status and the results table.
    elsewhere = tmp_path / "laptop"
    elsewhere.mkdir()
    assert "2/2 cells done" in _stdout_of("status", "tiny", "--storage", uri, cwd=elsewhere)
    remote_table = _stdout_of("results", f"{uri}/tiny", cwd=elsewhere)
    local = tmp_path / "local-copy"
    pafs.copy_files(f"{BUCKET}/studies/tiny", str(local / "tiny"), source_filesystem=_s3(),
                    destination_filesystem=pafs.LocalFileSystem())
    local_table = _stdout_of("results", str(local / "tiny"), cwd=elsewhere)
    assert remote_table == local_table and "synthetic" in remote_table and "n=1" in remote_table
    rows = pd.concat([pd.read_parquet(p) for p in sorted((local / "tiny" / "results").glob("*.parquet"))])
    assert sorted(rows.cell_id) == sorted(cell_ids)

    # No credential value from the environment in anything under the storage root.
    objects = _objects("studies")
    assert len(objects) > 20  # study files, rows, generator, Tune and Train state
    secrets = [v.encode() for v in CREDENTIALS.values()]
    leaked = []
    for path in objects:
        with _s3().open_input_stream(path) as stream:
            data = stream.read()
        leaked += [path for secret in secrets if secret in data]
    assert not leaked
