"""The thread policy: its decisions on fake /proc readings, and the user's overrides."""

from __future__ import annotations

import sys

import pytest
import torch

import genlab
import genlab.data
from genlab import threads
from genlab.cli import main
from genlab.threads import Reading, ThreadGovernor, grant, others_busy, parse_busy, quota_cores

STAT = """cpu  400 10 100 5000 20 0 5 0 0 0
cpu0 200 10 50 2500 10 0 5 0 0 0
cpu1 200 0 50 2500 10 0 0 3 0 0
intr 12345 0 0
ctxt 999
procs_running 3
"""


def test_parse_busy_sums_the_usable_cpus_and_skips_idle_and_iowait():
    hz = threads.os.sysconf("SC_CLK_TCK")
    assert parse_busy(STAT, [0]) == pytest.approx((200 + 10 + 50 + 5) / hz)
    assert parse_busy(STAT, [1]) == pytest.approx((200 + 50 + 3) / hz)  # steal counts as busy
    assert parse_busy(STAT, [0, 1]) == pytest.approx(518 / hz)
    assert parse_busy("cpu0 7 0 3 90\n", [0]) == pytest.approx(10 / hz)  # old kernels: 4 fields
    assert parse_busy(STAT, [5]) == 0.0


def test_others_busy_takes_this_process_out():
    a = Reading(wall=10.0, busy=100.0, own=5.0)
    assert others_busy(a, Reading(12.0, 104.0, 6.0)) == pytest.approx(1.5)  # 3 s in 2 s
    assert others_busy(a, Reading(12.0, 102.0, 7.1)) == 0.0  # accounting skew: clamped
    assert others_busy(a, a) == 0.0


@pytest.mark.parametrize(("cores", "others", "cap", "want"), [
    (2, 0.0, 2, 2),  # idle machine: all of torch's threads
    (2, 0.15, 2, 2),  # daemons and this test's neighbours' crumbs do not count
    (2, 0.3, 2, 1),  # a core shared with a busy process is not idle
    (2, 1.0, 2, 1),  # one competing single-threaded job
    (2, 2.0, 2, 1),  # fully busy: still one thread
    (8, 0.0, 2, 2),  # never more than torch started with
    (8, 5.5, 8, 2),
])
def test_grant(cores, others, cap, want):
    assert grant(cores, others, cap) == want


def test_quota_cores():
    assert quota_cores("max 100000\n") is None
    assert quota_cores("200000 100000\n") == 2
    assert quota_cores("150000 100000\n") == 1  # 2 threads would be throttled half the time
    assert quota_cores("50000 100000\n") == 1
    assert quota_cores("garbage") is None


class FakeMachine:
    """/proc readings of a 2-core machine where others keep ``load`` cores busy; this process
    runs on ``torch.get_num_threads()`` cores. ``clock`` is the fake monotonic clock."""

    def __init__(self, load: float = 0.0) -> None:
        self.t = self.busy = self.own = 0.0
        self.load = load
        self.reads = 0

    def clock(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        mine = min(torch.get_num_threads(), 2 - min(self.load, 2.0))
        self.t += seconds
        self.own += mine * seconds
        self.busy += (mine + self.load) * seconds

    def __call__(self) -> Reading:
        self.reads += 1
        return Reading(self.t, self.busy, self.own)


@pytest.fixture
def two_threads(monkeypatch):
    """torch at 2 threads as its own default, no thread variables: the governor's domain."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_START_THREADS", 2)
    for name in threads._ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before)


def governor(machine: FakeMachine, **kw) -> ThreadGovernor:
    return ThreadGovernor(probe=machine, cores=2, clock=machine.clock, **kw)


def test_follows_the_load_and_restores_the_count(two_threads):
    m = FakeMachine(load=0.0)
    g = governor(m)
    assert g.reason is None and g.threads == 2
    m.advance(0.1)
    assert g.tick() == 2 and m.reads == 1  # too soon to measure: nothing read but at start
    m.load = 2.0  # two competing jobs start
    m.advance(0.2)
    assert g.tick() == 1 and torch.get_num_threads() == 1
    for _ in range(25):  # every step ticks; /proc is read once per interval only
        m.advance(0.1)
        g.tick()
    assert m.reads == 3 and g.threads == 1
    m.load = 0.05  # they stop: the window that saw them averages them in, the next is clean
    m.advance(2.0)
    assert g.tick() == 1
    m.advance(2.0)
    assert g.tick() == 2
    m.load = 1.0
    m.advance(2.0)
    g.tick()
    g.close()
    assert torch.get_num_threads() == 2


def test_close_restores_a_lowered_count(two_threads):
    m = FakeMachine(load=1.5)
    g = governor(m)
    m.advance(1.0)
    assert g.tick() == 1
    g.close()
    assert torch.get_num_threads() == 2
    assert g.tick() == 2  # closed: no more decisions


class Untouchable:
    def __call__(self) -> Reading:
        raise AssertionError("the governor read /proc although the user chose the threads")


def test_threads_argument_wins(two_threads):
    g = ThreadGovernor(1, probe=Untouchable(), cores=2)
    assert g.reason == "threads=" and torch.get_num_threads() == 1
    assert g.tick() == 1
    g.close()
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="at least 1"):
        ThreadGovernor(0)


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_environment_wins(two_threads, monkeypatch, name):
    monkeypatch.setenv(name, "2")
    g = ThreadGovernor(probe=Untouchable(), cores=2)
    assert g.reason == name and g.tick() == 2


def test_a_set_num_threads_call_wins(two_threads):
    torch.set_num_threads(3)  # after genlab was imported: the user's choice
    g = ThreadGovernor(probe=Untouchable(), cores=2)
    assert g.reason == "torch.set_num_threads" and g.tick() == 3
    g.close()
    assert torch.get_num_threads() == 3


def test_without_proc_stat_nothing_changes(two_threads, monkeypatch, tmp_path):
    monkeypatch.setattr(threads, "_PROC_STAT", tmp_path / "missing")
    g = ThreadGovernor()
    assert g.reason == "no /proc/stat" and g.tick() == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_system_probe_reads_this_machine():
    probe = threads.system_probe(threads.usable_cpus())
    a = probe()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = probe()
    assert b.wall > a.wall and b.own > a.own and b.busy >= a.busy
    assert others_busy(a, b) <= len(threads.usable_cpus())


def test_fit_trains_with_the_threads_given_and_restores(two_threads):
    torch.manual_seed(0)
    model = genlab.create("independent", shape=(1, 8, 8))
    seen = []
    model.on_step = lambda step: seen.append(torch.get_num_threads())
    data = genlab.data.load("synthetic:bars", "train", limit=64)
    genlab.fit(model, data, steps=3, batch_size=16, progress=False, threads=1)
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2


def test_cli_passes_threads_to_fit(monkeypatch, tmp_path):
    got = {}

    def fake_fit(model, data, **kw):
        got.update(kw)
        raise KeyboardInterrupt  # stop before training: the call is what this test is about

    monkeypatch.setattr(genlab, "fit", fake_fit)
    argv = ["train", "independent", "--data", "synthetic:bars", "--steps", "1", "--quiet",
            "--out", str(tmp_path / "run")]
    assert main([*argv, "--threads", "1"]) == 130 and got["threads"] == 1
    assert main(argv) == 130 and got["threads"] is None
