"""How many intra-op threads training uses when other processes share the machine.

torch's OpenMP threads meet at a barrier at the end of every parallelized operation. When
another process holds one of the cores, the thread that should run there waits for a time
slice while its partners spin (libgomp spins for ~3 ms before it sleeps, unless
OMP_WAIT_POLICY says otherwise), so every operation costs a scheduler round instead of
microseconds. A training step is hundreds of such operations (NADE's: thousands), and two
threads on two busy cores train several times slower than one thread (benchmarks/RESULTS.md,
"Under load"). One thread has no barrier to wait at: it simply runs whenever it gets a core.

``ThreadGovernor`` therefore grants torch as many threads as there are idle cores: when
created and every few seconds after (``tick``, called once per training step, reads /proc at
most that often), it measures the CPU time that *other* processes spent on the cores this
process may use (/proc/stat's busy time minus this process's own CPU time) and sets
``torch.set_num_threads`` to the cores left idle, at least one and never more than torch
started with. The threads the user chose always win: a ``threads=`` argument (``--threads``
on the command line), OMP_NUM_THREADS or MKL_NUM_THREADS in the environment, or a
``torch.set_num_threads`` call made after genlab was imported turns the governor off. Where
there is no /proc/stat (macOS, Windows) it leaves torch's count alone.

Float results depend on the thread count in their last bits (parallel reductions, and NADE's
batch shares are summed in another order), so a run, or a resumed run, is bit-for-bit
reproducible only with a fixed count: pass ``threads=N`` for that.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# What torch chose (or was told before genlab was imported). A different count later means
# the user set one; the governor never grants more than this.
_START_THREADS = torch.get_num_threads()
_ENV_OVERRIDES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# A core counts as idle when other processes leave at least 80% of it: a thread sharing a
# core with a busy process stalls its partners at every barrier.
_SLACK = 0.2
_INTERVAL = 2.0  # seconds between decisions: reacts to load within a few steps, costs nothing
_FIRST = 0.25  # the first decision comes after this long, long enough to measure (25 ticks/core)
_PROC_STAT = Path("/proc/stat")
_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class Reading:
    """CPU time counters at one moment (seconds)."""

    wall: float  # monotonic clock
    busy: float  # CPU time all processes spent on the usable cores
    own: float  # CPU time of this process, all its threads


def others_busy(a: Reading, b: Reading) -> float:
    """Cores that other processes kept busy, on average, between readings ``a`` and ``b``."""
    wall = b.wall - a.wall
    if wall <= 0:
        return 0.0
    # Tick-sampled /proc/stat and exact process times can disagree by a tick: clamp at 0.
    return max(0.0, (b.busy - a.busy) - (b.own - a.own)) / wall


def grant(cores: int, others: float, cap: int) -> int:
    """Threads for ``cores`` usable cores of which ``others`` are in use elsewhere."""
    return max(1, min(cap, math.floor(cores - others + _SLACK)))


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def parse_busy(text: str, cpus: Sequence[int]) -> float:
    """Busy CPU seconds of the given CPUs in /proc/stat's ``text``: user, nice, system, irq,
    softirq and steal (a hypervisor's other guests hold the core too); not idle or iowait."""
    wanted = {f"cpu{i}" for i in cpus}
    ticks = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(f) for f in (fields + ["0"] * 8)[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def quota_cores(text: str | None = None) -> int | None:
    """Whole cores allowed by a cgroup v2 CPU quota (a container's --cpus), None if unlimited."""
    try:
        text = _CPU_MAX.read_text() if text is None else text
        limit, period = text.split()[:2]
        return None if limit == "max" else max(1, int(int(limit) / int(period)))
    except (OSError, ValueError):
        return None


def system_probe(cpus: Sequence[int]) -> Callable[[], Reading] | None:
    """A function reading the counters for ``cpus``, or None where /proc/stat is missing."""
    try:
        parse_busy(_PROC_STAT.read_text(), cpus)
    except (OSError, ValueError):
        return None
    return lambda: Reading(time.monotonic(), parse_busy(_PROC_STAT.read_text(), cpus),
                           time.process_time())


def user_chose_threads() -> str | None:
    """Why the thread count is the user's (the environment or a set_num_threads call)."""
    for name in _ENV_OVERRIDES:
        if os.environ.get(name):
            return name
    if torch.get_num_threads() != _START_THREADS:
        return "torch.set_num_threads"
    return None


class ThreadGovernor:
    """Keeps torch's thread count at the idle cores while training; see the module docstring.

    ``threads``: a fixed count for the duration (the governor only sets and restores it).
    ``probe``, ``cores`` and ``clock`` replace the /proc readings, the usable core count and
    the monotonic clock (tests). ``close`` restores the count the process had before.
    """

    def __init__(self, threads: int | None = None, *, interval: float = _INTERVAL,
                 probe: Callable[[], Reading] | None = None, cores: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._before = torch.get_num_threads()
        self.interval = interval
        self._clock = clock
        self.reason: str | None = None  # why the count is not governed, if it is not
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
            self.reason = "threads="
        else:
            self.reason = user_chose_threads()
        cpus = usable_cpus()
        self.cores = cores or len(cpus)
        quota = quota_cores() if cores is None else None
        self.cap = min(self._before, quota or self._before)
        if self.reason is None and probe is None:
            probe = system_probe(cpus)
            if probe is None:
                self.reason = "no /proc/stat"
        self._probe = probe if self.reason is None and self.cap > 1 else None
        self._last: Reading | None = None
        self._next = 0.0
        if self._probe is not None:
            self._last = self._probe()
            self._next = self._clock() + _FIRST

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def tick(self) -> int:
        """Once per training step: every ``interval`` seconds, re-measure and set the count."""
        if self._probe is None or self._last is None or self._clock() < self._next:
            return self.threads
        now = self._probe()
        others = others_busy(self._last, now)
        k = grant(self.cores, others, self.cap)
        if k != self.threads:
            log.info("other processes keep %.1f of %d cores busy: %d torch thread(s)",
                     others, self.cores, k)
            torch.set_num_threads(k)
        self._last, self._next = now, self._clock() + self.interval
        return k

    def close(self) -> None:
        """Give back the thread count the process had before."""
        torch.set_num_threads(self._before)
        self._probe = None
