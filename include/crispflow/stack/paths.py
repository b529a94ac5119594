"""Where the local stack keeps its state, and keeping it private: 0700 folders, 0600 files."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# Every process the stack starts (and `up` itself) creates files 0600 and folders 0700: the home holds the lake
# (personal data), the ledger, secrets, logs and databases, none of them for other users of the machine.
PRIVATE_UMASK = 0o077
# What `up` tightens in a home an older version left world-readable: the entries the stack itself writes (not
# the whole home, which a user may have pointed at a folder holding other things).
STATE_ENTRIES = ("airflow", "mlflow", "lake", "logs", "run", "cache", "secrets.json", "serve-tokens.json", "ledger.db",
                 "lineage")


def private_umask() -> None:
    """From now on this process (and what it starts) creates files readable by its user only."""
    os.umask(PRIVATE_UMASK)


def tighten(path: Path) -> int:
    """Remove group/other permissions from `path` and everything under it (symlinks not followed: a link's own
    mode means nothing and its target may lie outside the home). Returns how many entries changed."""
    if path.is_symlink() or not path.exists():
        return 0
    entries = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):  # followlinks=False
            entries += [Path(root, name) for name in (*dirs, *files)]
    changed = 0
    for entry in entries:
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:  # removed meanwhile (a temporary file)
            continue
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode) or not mode & 0o077:
            continue
        entry.chmod(stat.S_IMODE(mode) & ~0o077)
        changed += 1
    return changed


@dataclass(frozen=True)
class StackPaths:
    """Every file and folder of the local stack, all under `home` (`settings.home`)."""

    home: Path

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def airflow_db(self) -> Path:
        return self.airflow_home / "airflow.db"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def secrets_file(self) -> Path:
        return self.home / "secrets.json"

    @property
    def lineage(self) -> Path:
        return self.home / "lineage"

    @property
    def lineage_events(self) -> Path:
        """The OpenLineage events of the stack's DAG runs and tasks, one JSON per line (the file transport)."""
        return self.lineage / "events.jsonl"

    @property
    def stack_file(self) -> Path:
        """Profile and ports of the running stack, written by `up`, removed by `down`."""
        return self.run / "stack.json"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        """Create the folders, private (umask 0o077 for this process from now on); tighten what an older version
        left readable by others."""
        private_umask()
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (self.airflow_home, self.mlflow_artifacts, self.lake, self.logs, self.run, self.lineage):
            path.mkdir(parents=True, exist_ok=True)
        tighten_home(self.home)


def tighten_home(home: Path) -> int:
    """0700/0600 for the home and the stack's entries in it; returns how many entries changed."""
    changed = 0
    if (mode := stat.S_IMODE(home.stat().st_mode)) & 0o077:
        home.chmod(mode & ~0o077)
        changed += 1
    return changed + sum(tighten(home / name) for name in STATE_ENTRIES)
