"""What every benchmark says about the machine it ran on, and how it turns alternating rounds into one ratio.

`check_quiet()` runs first: it reads the 1-minute load average, waits a little for it to settle when the machine
is busy, and returns a `Machine` whose `note` each benchmark prints and writes into RESULTS.md, so a number taken
on a busy machine says so. `median_ratio()` is the one way ratios are formed: the median of per-round ratios, each
round timing both contenders back to back (alternating which goes first).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BUSY_PER_CPU = 0.5  # a 1-minute load average above this many runnable tasks per CPU counts as busy


@dataclass(frozen=True)
class Machine:
    cpus: int
    load1_before: float
    busy: bool
    waited_s: float

    @property
    def note(self) -> str:
        """One line for the benchmark's output and its RESULTS.md section."""
        base = f"{platform.machine()}, {self.cpus} CPUs, load average (1 min) {self.load1_before:.2f} at the start"
        if self.busy:
            return (f"{base}: BUSY (above {BUSY_PER_CPU:g} per CPU after waiting {self.waited_s:.0f} s); "
                    "absolute numbers are slower than on a quiet machine, ratios less so")
        return f"{base}: quiet"


def load1() -> float:
    return os.getloadavg()[0]


def check_quiet(wait_s: float = 60.0, poll_s: float = 5.0) -> Machine:
    """Wait up to `wait_s` for the load to drop under the busy line, then report (never refuses to run)."""
    cpus = os.cpu_count() or 1
    limit = BUSY_PER_CPU * cpus
    start = time.monotonic()
    while load1() > limit and time.monotonic() - start < wait_s:
        time.sleep(poll_s)
    waited = time.monotonic() - start
    machine = Machine(cpus=cpus, load1_before=load1(), busy=load1() > limit, waited_s=waited)
    print(f"machine: {machine.note}", flush=True)
    return machine


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median over rounds of numerator / denominator, pairing the values of one round."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("median_ratio needs one numerator and one denominator per round")
    return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))


RESULTS = Path(__file__).with_name("RESULTS.md")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command as a reader would type it, for the RESULTS.md section."""
    return f"python -m {module}" + (f" {' '.join(argv)}" if argv else "")


def report(text: str, record: bool) -> None:
    """Print a benchmark's markdown section and, if `record`, append it to benchmarks/RESULTS.md."""
    print(text)
    if record:
        with RESULTS.open("a") as handle:
            handle.write("\n" + text)
