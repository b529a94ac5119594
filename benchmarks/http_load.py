"""Closed-loop HTTP load with Debian's `wrk`: N connections POST JSON bodies (rotated) as fast as answers come.

`run_wrk(url, bodies, concurrency=8, duration=10)` writes the bodies (one per line) and a Lua script to a temp
folder, runs `wrk -t1 -c<concurrency>` on loopback and returns a `LoadResult` parsed from the line the script's
`done()` prints: requests, errors (connect/read/write/timeout/non-2xx) and latency percentiles in microseconds.
One wrk thread drives every connection (epoll), so the load generator takes as little CPU as possible from the
servers on a small machine. Each connection starts at a different body, then walks through all of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MARKER = "BENCH_JSON "

LUA = r"""
local reqs = {}
local counter = 0
local thread_count = 0

setup = function(thread)
  thread_count = thread_count + 1
end

init = function(args)
  local path = args[2]
  local headers = {["Content-Type"] = "application/json"}
  for i = 3, #args do  -- extra "Name: value" headers (e.g. a bearer token)
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
  for line in io.lines(args[1]) do
    if #line > 0 then
      table.insert(reqs, wrk.format("POST", path, headers, line))
    end
  end
  counter = 0
end

request = function()
  counter = counter % #reqs + 1
  return reqs[counter]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"connect\": %d, \"read\": %d, " ..
    "\"write\": %d, \"status\": %d, \"timeout\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, " ..
    "\"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


class LoadError(RuntimeError):
    """wrk is missing, failed, or printed no result."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. Latencies in milliseconds; `errors` counts every failed request (socket errors and non-2xx)."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def throughput(self) -> float:
        """Requests per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": self.throughput}


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise LoadError("wrk: not found on PATH (Debian: apt-get install -y wrk)")
    return found


def run_wrk(url: str, bodies: Sequence[str], *, concurrency: int, duration: float, timeout: float = 10.0,
            headers: Mapping[str, str] | None = None) -> LoadResult:
    """POST `bodies` (JSON texts, rotated) to `url` with `concurrency` connections for `duration` seconds, with
    `headers` on every request (e.g. a bearer token)."""
    if concurrency < 1:
        raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
    if not bodies or any("\n" in b for b in bodies):
        raise ValueError("bodies: need at least one, each on a single line")
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"url: loopback only, got {parts.hostname!r}")
    base = f"{parts.scheme}://{parts.netloc}/"
    with tempfile.TemporaryDirectory(prefix="crispflow-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        data = Path(tmp) / "bodies.jsonl"
        data.write_text("\n".join(bodies) + "\n")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")  # the query string too
        argv = [wrk_path(), "-t1", f"-c{concurrency}", f"-d{max(round(duration), 1)}s",
                f"--timeout={int(timeout)}s", "-s", str(script), base, "--", str(data), target,
                *(f"{name}: {value}" for name, value in (headers or {}).items())]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30, check=False)
    if out.returncode != 0:
        raise LoadError(f"wrk exited with {out.returncode}: {out.stderr.strip()[-500:]}")
    line = next((x for x in out.stdout.splitlines() if x.startswith(MARKER)), None)
    if line is None:
        raise LoadError(f"wrk printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(line[len(MARKER):])
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return LoadResult(concurrency=concurrency, duration_s=raw["duration_us"] / 1e6, requests=raw["requests"],
                      errors=socket_errors + raw["status"], non_2xx=raw["status"], p50_ms=raw["p50_us"] / 1000,
                      p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
                      mean_ms=raw["mean_us"] / 1000)
