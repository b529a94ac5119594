"""A private, throw-away PostgreSQL cluster for tests that crash or restart the database (never the machine's
shared server): `initdb` into a temporary directory, `pg_ctl` on a free loopback port, trust authentication.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as `nobody` (its directory is
handed to that user). Skips the test when the server binaries are not installed.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.servers import LOOPBACK, free_port

RUN_AS = "nobody"


def server_bin() -> Path | None:
    """The directory of `initdb`/`pg_ctl` (PATH, else the newest /usr/lib/postgresql/<v>/bin), or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@dataclass
class PrivateCluster:
    """A running private cluster: its data directory, port and the superuser `postgres` (trust auth)."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@{LOOPBACK}:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args]
        return _run_as_owner(argv, timeout=timeout)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses={LOOPBACK} -c unix_socket_directories={self.root}"
        done = self._ctl("start", "-w", "-t", "60", "-o", opts)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr}\n{self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean shutdown that disconnects every client; `immediate`: a crash (recovery at next start)."""
        done = self._ctl("stop", "-w", "-m", mode)
        if done.returncode != 0 and "not running" not in (done.stderr + done.stdout):
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr}")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return self._ctl("status").returncode == 0

    def wait_ready(self, timeout: float = 60) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(host=LOOPBACK, port=self.port, user="postgres", dbname="postgres",
                                 connect_timeout=3).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_as_owner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    if _as_root():
        argv = ["runuser", "-u", RUN_AS, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """initdb + start on a free port; stop (immediate) and delete on exit."""
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="crispflow-pg-"))
    if _as_root():
        shutil.chown(root, user=RUN_AS)
    cluster = PrivateCluster(bin_dir, root, free_port())
    init = _run_as_owner([str(bin_dir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust",
                          "-E", "UTF8", "--no-sync"], timeout=180)
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    try:
        cluster.start()
        cluster.wait_ready()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster per test module."""
    with private_cluster() as cluster:
        yield cluster
