"""Training throughput on a machine that other jobs share: genlab's thread policy against
the fixed thread count genlab used before, for NADE, PixelCNN and the VAE.

    python benchmarks/under_load.py                    # 18 measurements, about 4 minutes
    python benchmarks/under_load.py nade --seconds 4   # a quick check

Every configuration first runs on the machine as it is ("idle": run this on an idle
machine), then again while two competing jobs run, which the script starts and stops
itself: each is a torch process with two threads computing ``a = torch.tanh(a @ a)`` on
256x256 matrices without end (another training run, in miniature), in a session of its own as
a job started from another terminal is. (Linux's autogroup scheduling, on by default, shares
the CPU equally between sessions rather than between threads: ``--same-session`` puts the
jobs in this script's session to see the other case.) Each measurement is a
fresh process, as a training run is, timing full training steps (forward, backward, Adam)
on random binary 28x28 batches at the ``cpu`` preset's model and batch size, after a warm-up
long enough for the governor's first decisions; the governor ticks once per step, as in
``genlab.fit``. Configurations:

- policy: genlab's default, ``ThreadGovernor()`` (threads = idle cores, at least 1);
- fixed: torch's default thread count throughout, what genlab did before (``threads=N``);
- fixed, passive: the same with OMP_WAIT_POLICY=passive (OpenMP threads sleep at a barrier
  at once instead of spinning; it only works when set before torch starts);
- 1 thread, idle only: the speed the policy's one thread would have on its own, so that the
  loaded policy's speed over it is the share of a core the scheduler gave this process.

Prints a Markdown table for RESULTS.md: images/s idle and loaded, the loaded/idle ratio (the
target: at least 0.45 with the policy), the thread counts the policy chose, this process's
CPU time per image (it grows where threads spin instead of working) and the cores that other
processes kept busy during each measurement (near 0 in the idle column, or the idle numbers
are not idle).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from speed import batch_for, machine_line, matmul_peak, train_step

import genlab
from genlab.threads import ThreadGovernor, others_busy, system_probe, usable_cpus

MODELS = ("nade", "pixelcnn", "vae")
# name: (threads: None for the policy, 0 for torch's default; environment; measured loaded)
MODES: dict[str, tuple[int | None, dict[str, str], bool]] = {
    "policy": (None, {}, True),
    "fixed": (0, {}, True),
    "fixed, passive": (0, {"OMP_WAIT_POLICY": "passive"}, True),
    "1 thread": (1, {}, False),
}
TARGET = 0.45  # the share of its idle throughput training must keep under the load below
# Thread settings a user's shell may hold; the measurements are of the defaults.
_CLEAR = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(256, 256)
a = torch.tanh(a @ a)
print("ready", flush=True)
while True:
    a = torch.tanh(a @ a)
"""


def measure(name: str, mode: str, seconds: float) -> dict[str, float]:
    """Train-step throughput of one model in this process (the child's side)."""
    threads = MODES[mode][0]
    policy = threads is None
    if threads == 0:
        threads = torch.get_num_threads()  # torch's default, held fixed
    governor = ThreadGovernor(threads)
    torch.manual_seed(0)
    model = genlab.create(name, shape=(1, 28, 28), preset="cpu")
    batch_size = type(model).presets["cpu"]["train"]["batch_size"]
    batch = batch_for(model, batch_size)
    opts = {p: torch.optim.Adam(model.parameters_for(p), lr=1e-4) for p in model.players}
    step = 0

    def run(duration: float, min_steps: int) -> tuple[int, set[int]]:
        nonlocal step
        n, seen, start = 0, set(), time.perf_counter()
        while n < min_steps or time.perf_counter() - start < duration:
            seen.add(governor.tick())
            train_step(model, opts, batch, step)
            step, n = step + 1, n + 1
        return n, seen

    # Two steps warm up allocations (and compile NADE's sweep); the policy also gets the time
    # of its first decision (0.25 s), and decides again every 2 s while it is timed.
    run(1.0 if policy else 0.0, 2)
    probe = system_probe(usable_cpus())
    before = probe() if probe else None
    start, cpu = time.perf_counter(), time.process_time()
    n, seen = run(seconds, 2)
    wall = time.perf_counter() - start
    governor.close()
    return {
        "batch": batch_size,
        "img_s": n * batch_size / wall,
        "threads": sorted(seen),
        "own": (time.process_time() - cpu) / wall,
        "others": others_busy(before, probe()) if probe else float("nan"),
    }


def in_child(name: str, mode: str, seconds: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEAR} | MODES[mode][1]
    cmd = [sys.executable, __file__, name, "--child", mode, "--seconds", str(seconds)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                          timeout=120 + 10 * seconds)
    return json.loads(done.stdout.splitlines()[-1])


def start_competitors(n: int, own_sessions: bool) -> list[subprocess.Popen]:
    jobs = [subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE,
                             text=True, start_new_session=own_sessions) for _ in range(n)]
    for job in jobs:  # wait until each computes, so that no measurement sees a half load
        job.stdout.readline()
    return jobs


def stop(jobs: list[subprocess.Popen]) -> None:
    for job in jobs:
        job.kill()
        job.wait()


def autogroup() -> str:
    """Whether Linux shares the CPU between sessions (autogroup) rather than between threads."""
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return "unknown"
    return "on" if on else "off"


def threads_text(r: dict) -> str:
    return "/".join(str(t) for t in r["threads"])


def cpu_ms(r: dict) -> float:
    """This process's CPU time per image: it grows where threads spin instead of working."""
    return 1000 * r["own"] / r["img_s"]


def report(results: dict, names: list[str]) -> None:
    print("| model | batch | threads | idle img/s | loaded img/s | loaded / idle | "
          "threads idle → loaded | CPU ms per image idle → loaded | "
          "other processes' load idle → loaded (cores) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for mode in MODES:
            idle, loaded = results[name, mode, "idle"], results.get((name, mode, "loaded"))
            if loaded is None:
                print(f"| {name} | {idle['batch']} | {mode} | {idle['img_s']:,.0f} | – | – | "
                      f"{threads_text(idle)} | {cpu_ms(idle):.2f} | {idle['others']:.2f} |")
                continue
            ratio = loaded["img_s"] / idle["img_s"]
            shown = f"**{ratio:.2f}**" if mode == "policy" else f"{ratio:.2f}"
            print(f"| {name} | {idle['batch']} | {mode} | {idle['img_s']:,.0f} | "
                  f"{loaded['img_s']:,.0f} | {shown} | {threads_text(idle)} → "
                  f"{threads_text(loaded)} | {cpu_ms(idle):.2f} → {cpu_ms(loaded):.2f} | "
                  f"{idle['others']:.2f} → {loaded['others']:.2f} |")
    print()
    for name in names:
        speed = {(m, c): r["img_s"] for (n, m, c), r in results.items() if n == name}
        ratio = speed["policy", "loaded"] / speed["policy", "idle"]
        verdict = "met" if ratio >= TARGET else "NOT met"
        print(f"- {name}: the policy keeps {ratio:.2f} of its idle throughput under load "
              f"(target ≥ {TARGET}: {verdict}); idle, policy / fixed = "
              f"{speed['policy', 'idle'] / speed['fixed', 'idle']:.2f}; loaded, policy / fixed "
              f"= {speed['policy', 'loaded'] / speed['fixed', 'loaded']:.1f}×; loaded policy / "
              f"idle 1 thread = {speed['policy', 'loaded'] / speed['1 thread', 'idle']:.2f} "
              f"(the share of a core this process got, if the policy ran one thread)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", default=list(MODELS), help=f"of {', '.join(MODELS)}")
    p.add_argument("--seconds", type=float, default=6.0, help="timing window per measurement")
    p.add_argument("--competitors", type=int, default=2, help="competing jobs (default 2)")
    p.add_argument("--same-session", action="store_true",
                   help="start the competing jobs in this session, not each in its own")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if set(args.models) - set(MODELS):
        p.error(f"models are among {', '.join(MODELS)}")
    if args.child:
        print(json.dumps(measure(args.models[0], args.child, args.seconds)))
        return
    t0 = time.perf_counter()
    print(machine_line(matmul_peak()))
    where = "this script's session" if args.same_session else "a session each"
    print(f"loaded: {args.competitors} competing jobs of 2 threads, {where}; autogroup "
          f"scheduling {autogroup()}; {args.seconds:g} s per measurement")
    print()
    results = {}
    for condition in ("idle", "loaded"):
        jobs = (start_competitors(args.competitors, not args.same_session)
                if condition == "loaded" else [])
        try:
            for name in args.models:
                for mode, (_, _, under_load) in MODES.items():
                    if condition == "idle" or under_load:
                        results[name, mode, condition] = in_child(name, mode, args.seconds)
        finally:
            stop(jobs)
    report(results, args.models)
    print(f"\n(whole run: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
