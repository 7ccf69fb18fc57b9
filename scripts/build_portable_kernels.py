"""Compile the assembly kernels for any x86-64 CPU and ship them with the package.

Runs the common paths in a child process with ``NUMBA_CPU_NAME=generic`` (the x86-64
baseline: no instruction set beyond what every x86-64 CPU has) and a fresh numba cache,
then copies the cache files of ``ppp_zoo/postprocess`` into
``ppp_zoo/postprocess/_portable_kernels/`` with a ``manifest.json`` (numba and Python
versions, kernels, sizes). ``ppp_zoo/postprocess/_portable.py`` loads them when numba
finds no kernel compiled on the machine itself (see there for when they apply).

The paths: ``segment --demo`` of every embedded model in fast and in exact mode (with
``--overlay`` and ``--rois``), ``segment --scale auto`` and ``--tta`` on the default model,
and GT-patch assemblies of 2D labels, overlapping 2D masks and 3D labels in both modes,
once whole and once blockwise. Rebuild after changing a kernel's source file (its cache
entries no longer apply then; ``tests/test_portable_kernels.py`` says so).

Usage:
  python scripts/build_portable_kernels.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "ppp_zoo" / "postprocess" / "_portable_kernels"

WORKLOAD = r'''
import sys, tempfile
import numpy as np
from typer.testing import CliRunner
from ppp_zoo.cli import app
from ppp_zoo.runtime.models import embedded_models
from ppp_zoo.data.synth import synth_nuclei, synth_worms
from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble, assemble_blockwise

runner = CliRunner()
def cli(*args):
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    print(" ".join(args[:4]), "ok", flush=True)

out = tempfile.mkdtemp()
for entry in embedded_models():
    for mode in ("--fast", "--exact"):
        cli("segment", "--demo", "--model", entry["name"], "--scale", "1", mode, "--overlay",
            "--rois", "-o", out)
cli("segment", "--demo", "-o", out)            # --scale auto
cli("segment", "--demo", "--tta", "--scale", "1", "-o", out)
for fast in (True, False):
    _, labels = synth_nuclei((600, 560), n_nuclei=60, seed=1)
    numinst, patches = instance_targets(labels, (9, 9))
    for partition in ("mws", "cc"):
        params = AssemblyParams(patchshape=(9, 9), fast=fast, partition=partition)
        assemble(numinst, patches, params)
        assemble_blockwise(numinst, patches, params)
    _, masks = synth_worms((256, 256), n_worms=5, seed=1, length=(80, 120), width=(6, 9),
                           posture="plain")
    numinst, patches = instance_targets(masks, (17, 17), overlapping=True)
    params = AssemblyParams(patchshape=(17, 17), fast=fast, overlapping=True, partition="cc")
    assemble(numinst, patches, params)
    _, labels3 = synth_nuclei((40, 64, 64), n_nuclei=12, seed=1)
    numinst, patches = instance_targets(labels3, (7, 7, 7))
    assemble(numinst, patches, AssemblyParams(patchshape=(7, 7, 7), fast=fast))
print("workload done", flush=True)
'''


VARIANTS = {"x86-64-v4": ("x86-64-v4", "+sse2"), "x86-64-v3": ("x86-64-v3", "+sse2"),
            "generic": ("generic", "")}
"""Kernel sets: folder -> (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES). ``+sse2`` adds nothing to
the x86-64-v3 level (AVX2, FMA, BMI2, ...) but keeps numba from adding the build
machine's own features; ``generic`` is the x86-64 baseline."""


def build(folder: str, cpu: str, features: str) -> dict:
    import numba

    target = TARGET / folder
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
               "NUMBA_CACHE_DIR": cache, "PPP_ZOO_PORTABLE_KERNELS": "0"}
        if not features:
            env.pop("NUMBA_CPU_FEATURES")  # generic: numba's default, no features
        subprocess.run([sys.executable, "-c", WORKLOAD], env=env, check=True, cwd=ROOT)
        files = [p for p in Path(cache).rglob("*") if p.is_file() and
                 p.name.split(".")[0] in ("_kernels", "decode")]
        if not files:
            raise SystemExit("no kernel cache files were written")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, target / path.name)
    return {"cpu": cpu, "features": features, "files": len(files),
            "bytes": sum(p.stat().st_size for p in target.iterdir()),
            "kernels": sorted(p.name for p in target.glob("*.nbi")), "numba": numba.__version__}


def main() -> int:
    if TARGET.exists():
        shutil.rmtree(TARGET)
    manifest = {"python": platform.python_version(), "machine": platform.machine(),
                "variants": {f: build(f, *v) for f, v in VARIANTS.items()}}
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for folder, info in manifest["variants"].items():
        print(f"{folder}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB, "
              f"{len(info['kernels'])} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
