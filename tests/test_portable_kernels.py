"""The shipped portable assembly kernels (ppp_zoo/postprocess/_portable.py): a fresh
environment's first ``segment --demo`` compiles nothing, and the shipped kernels give the
instances that kernels compiled on this machine give."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from ppp_zoo.postprocess import _portable

MANIFEST = _portable.PORTABLE_DIR / "manifest.json"


def _applies() -> str | None:
    """Why the shipped kernels cannot apply here (None when they should)."""
    import numba

    if not MANIFEST.exists():
        return "no shipped kernels"
    manifest = json.loads(MANIFEST.read_text())
    variant = _portable.chosen_variant()
    if variant is None:
        return f"no shipped kernels for this machine ({platform.machine()})"
    built = manifest["variants"][variant[0]]
    if built["numba"] != numba.__version__:
        return f"built with numba {built['numba']}, this is {numba.__version__}"
    if manifest["python"].rsplit(".", 1)[0] != platform.python_version().rsplit(".", 1)[0]:
        return f"built with Python {manifest['python']}"
    return None


CHILD = r'''
import json, sys
from numba.core import event
from typer.testing import CliRunner
from ppp_zoo.cli import app
with event.install_recorder("numba:compile") as rec:
    res = CliRunner().invoke(app, ["segment", "--demo", "-o", sys.argv[1], "--json"])
compiled = sorted({ev.data["dispatcher"].py_func.__module__ + "." +
                   ev.data["dispatcher"].py_func.__qualname__
                   for _, ev in rec.buffer if ev.is_start and "dispatcher" in ev.data})
print(json.dumps({"exit": res.exit_code, "compiled": compiled}))
'''


def _child(code: str, tmp_path, portable: bool, *args) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
           "PPP_ZOO_PORTABLE_KERNELS": "1" if portable else "0"}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_first_segment_in_a_fresh_environment_compiles_no_kernel(tmp_path):
    reason = _applies()
    if reason:
        pytest.skip(f"the shipped kernels do not apply: {reason}")
    result = json.loads(_child(CHILD, tmp_path, True, tmp_path / "out"))
    assert result["exit"] == 0
    ours = [name for name in result["compiled"] if name.startswith("ppp_zoo.")]
    assert not ours, ("kernels compiled although shipped (a kernel's source changed: run "
                      f"scripts/build_portable_kernels.py): {ours}")


ASSEMBLE = r'''
import sys
import numpy as np
from ppp_zoo.data.synth import synth_nuclei
from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble
_, labels = synth_nuclei((200, 240), n_nuclei=30, seed=5)
numinst, patches = instance_targets(labels, (9, 9))
out = [assemble(numinst, patches, AssemblyParams(patchshape=(9, 9), fast=f)) for f in (1, 0)]
np.save(sys.argv[1], np.stack(out))
print("ok")
'''


@pytest.mark.slow
def test_shipped_and_machine_compiled_kernels_give_the_same_instances(tmp_path):
    reason = _applies()
    if reason:
        pytest.skip(f"the shipped kernels do not apply: {reason}")
    _child(ASSEMBLE, tmp_path / "a", True, tmp_path / "shipped.npy")
    _child(ASSEMBLE, tmp_path / "b", False, tmp_path / "here.npy")
    shipped, here = np.load(tmp_path / "shipped.npy"), np.load(tmp_path / "here.npy")
    assert shipped.max() > 20  # instances in both modes
    np.testing.assert_array_equal(shipped, here)
