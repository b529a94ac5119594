"""The stack's processes: launched in their own session, recorded by PID, stopped by process group, never by name.

A PID file records the process's start time and a word of its command line, both read from /proc, so a PID
that was reused by another program is never signalled. Every process starts with umask 0o077 (PRIVATE_UMASK):
what the stack writes (databases, logs, the lake, artifacts) is readable by its user only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from crispflow.stack.errors import StackError
from crispflow.stack.paths import PRIVATE_UMASK, StackPaths
from crispflow.stack.topology import ProcessSpec, SetupStep

STOP_TIMEOUT = 20.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class PidRecord:
    """What `up` wrote about a process it started: enough to recognise it again, and nothing else."""

    name: str
    pid: int
    start_time: int  # clock ticks since boot, /proc/<pid>/stat field 22: survives exec, defeats PID reuse
    marker: str  # a word its cmdline must contain
    argv: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        data = json.loads(text)
        return cls(
            str(data["name"]),
            int(data["pid"]),
            int(data["start_time"]),
            str(data["marker"]),
            tuple(data.get("argv", ())),
        )


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    state: str
    pgrp: int
    session: int
    start_time: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")  # zombie or dead


def proc_info(pid: int) -> ProcInfo | None:
    """Parse /proc/<pid>/stat; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = raw[raw.rindex(")") + 2 :].split()  # the command name in (...) may contain spaces
    return ProcInfo(pid, rest[0], int(rest[2]), int(rest[3]), int(rest[19]))


def proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_alive(pid: int) -> bool:
    info = proc_info(pid)
    return info is not None and info.alive


def is_ours(record: PidRecord) -> bool:
    """True if the PID is alive and still the process `up` started: same start time, same command."""
    info = proc_info(record.pid)
    if info is None or not info.alive or info.start_time != record.start_time:
        return False
    return record.marker in _settled_cmdline(record.pid)


def _settled_cmdline(pid: int, wait: float = 1.0) -> str:
    """The cmdline, waiting out the moments it reads empty (mid-exec right after launch, or mid-exit)."""
    deadline = time.monotonic() + wait
    while not (cmdline := proc_cmdline(pid)) and is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return cmdline


def group_members(leader: int) -> list[int]:
    """Live processes in the leader's process group or session (children that changed group included)."""
    members = []
    for entry in Path("/proc").iterdir():
        info = proc_info(int(entry.name)) if entry.name.isdigit() else None
        if info and info.alive and leader in (info.pgrp, info.session):
            members.append(info.pid)
    return members


def read_pid_records(paths: StackPaths) -> list[PidRecord]:
    records = []
    for pid_file in sorted(paths.run.glob("*.pid")):
        try:
            records.append(PidRecord.from_json(pid_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            print(f"ignoring unreadable PID file {pid_file}", file=sys.stderr)
    return records


def write_pid_record(paths: StackPaths, record: PidRecord) -> None:
    tmp = paths.pid_file(record.name).with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(record.to_json())
    tmp.replace(paths.pid_file(record.name))


def running_records(paths: StackPaths) -> dict[str, PidRecord]:
    """PID records whose process is still ours; stale PID files are removed."""
    running = {}
    for record in read_pid_records(paths):
        if is_ours(record):
            running[record.name] = record
        else:
            paths.pid_file(record.name).unlink(missing_ok=True)
    return running


def launch(spec: ProcessSpec, paths: StackPaths) -> subprocess.Popen[bytes]:
    """Start a process in its own session (so its whole group can be signalled) and record its PID."""
    title = f"crispflow starts {spec.name}"
    proc = _logged(subprocess.Popen, spec.argv, spec.env, paths, spec.name, title, start_new_session=True)
    info = proc_info(proc.pid)
    start_time = info.start_time if info else 0
    write_pid_record(paths, PidRecord(spec.name, proc.pid, start_time, spec.marker, spec.argv))
    return proc


def run_setup_step(step: SetupStep, paths: StackPaths) -> None:
    """Run a one-shot command to the end, its output appended to the setup log; fail with the log's tail."""
    result = _logged(subprocess.run, step.argv, step.env, paths, "setup", step.name, check=False)
    if result.returncode != 0:
        log_path = paths.log_file("setup")
        raise StackError(
            f"setup step {step.name!r} failed (exit {result.returncode}); last lines of {log_path}:\n{tail(log_path)}"
        )


def _logged(
    run: Callable[..., _T],
    argv: tuple[str, ...],
    env: Mapping[str, str],
    paths: StackPaths,
    log_name: str,
    title: str,
    **kwargs: bool,
) -> _T:
    """`run` (Popen or run) on argv in the stack's home, its output appended to `<logs>/<log_name>.log` (0600);
    the process starts with umask PRIVATE_UMASK."""
    fd = os.open(paths.log_file(log_name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {title}: {' '.join(argv)}\n".encode())
        log.flush()
        return run(
            argv,
            env={**os.environ, **env},
            cwd=paths.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            umask=PRIVATE_UMASK,
            **kwargs,
        )


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def stop_records(paths: StackPaths, records: Iterable[PidRecord], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM each record's process group, SIGKILL what is left after `timeout`, remove the PID files.

    A record whose PID is dead or belongs to another program is not signalled; its PID file is removed.
    Returns one human-readable line per record.
    """
    lines, targets = [], []
    for record in records:
        if is_ours(record):
            _signal_group(record.pid, signal.SIGTERM)
            targets.append(record)
        else:
            why = "not running" if not is_alive(record.pid) else "PID now belongs to another program"
            lines.append(f"{record.name}: {why} (pid {record.pid}); not signalled")
            paths.pid_file(record.name).unlink(missing_ok=True)
    left = _wait_gone([r.pid for r in targets], timeout)
    for leader in left:
        _signal_group(leader, signal.SIGKILL)
    _wait_gone(left, 5.0)
    for record in targets:
        how = "killed (SIGKILL)" if record.pid in left else "stopped"
        lines.append(f"{record.name}: {how} (pid {record.pid})")
        paths.pid_file(record.name).unlink(missing_ok=True)
    return lines


def _signal_group(leader: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, sig)
    for pid in group_members(leader):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(leaders: Iterable[int], timeout: float) -> list[int]:
    """Wait until no leader has a live group member; return the leaders that still have some."""
    deadline = time.monotonic() + timeout
    pending = list(leaders)
    while pending:
        pending = [leader for leader in pending if group_members(leader)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return pending
