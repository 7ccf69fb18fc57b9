"""The first run in a fresh environment: ``ppp-zoo segment --demo`` with an empty numba
cache, with and without the shipped portable kernels, against the second run.

Each run is a new process with its own empty ``NUMBA_CACHE_DIR`` (what a new environment,
a cluster node or a CI runner starts with). Also times the assembly itself on the DSB GT
patches (25 x 25; fast and exact mode) with the shipped kernels against kernels compiled for
this machine's own CPU, both warm.

Prints the seconds and the ratios (the goal: the first run within 3x the second).

Usage:
  python scripts/bench_first_run.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

ASSEMBLY = r'''
import time
from ppp_zoo.data import load_dsb_sample
from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble
_, labels = load_dsb_sample()
numinst, patches = instance_targets(labels, (25, 25))
for fast in (True, False):
    params = AssemblyParams(patchshape=(25, 25), fast=fast)
    assemble(numinst, patches, params)
    best = min(_time(lambda: assemble(numinst, patches, params)) for _ in range(3))
    print("fast" if fast else "exact", best)
'''


def _run(args: list[str], cache: str, portable: bool) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache,
           "PPP_ZOO_PORTABLE_KERNELS": "1" if portable else "0"}
    t = time.perf_counter()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    demo = [sys.executable, "-m", "ppp_zoo.cli", "segment", "--demo", "-o"]
    rows = {}
    for portable in (True, False):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
            first = _run(demo + [out], cache, portable)
            second = _run(demo + [out], cache, portable)
        rows["shipped kernels" if portable else "compiled here"] = (first, second)
    print("| numba cache | first segment --demo (s) | second (s) | first / second |")
    print("|---|---|---|---|")
    for name, (first, second) in rows.items():
        print(f"| {name} | {first:.1f} | {second:.1f} | {first / second:.1f}x |")
    code = "def _time(f):\n    t = time.perf_counter(); f(); return time.perf_counter() - t\n" \
        + ASSEMBLY
    times = {}
    for portable in (True, False):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache,
                   "PPP_ZOO_PORTABLE_KERNELS": "1" if portable else "0"}
            out = subprocess.run([sys.executable, "-c", "import time\n" + code], env=env,
                                 check=True, capture_output=True, text=True).stdout
            times[portable] = dict((k, float(v)) for k, v in
                                   (line.split() for line in out.strip().splitlines()))
    print("\n| DSB GT patches 25x25 | shipped kernels (s) | compiled here (s) | ratio |")
    print("|---|---|---|---|")
    for mode in ("fast", "exact"):
        a, b = times[True][mode], times[False][mode]
        print(f"| {mode} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
