"""The CUDA assembly kernels (``ppp_zoo/postprocess/_cuda_kernels.py``) against the CPU ones.

Without a GPU the CUDA kernels run in numba's CUDA simulator, which must be switched on
(``NUMBA_ENABLE_CUDASIM=1``) before numba is imported: those comparisons run in one
subprocess, on tiny noisy inputs (the simulator runs every GPU thread as Python), with
GPU blocks small enough that the consensus is computed in several slabs with a ring that
wraps and the edge weights in several chunks. Each case checks, step by step, that the
GPU path gives the CPU path's consensus (bit for bit), |H_c|, scores, cover, edges,
weights and labels.

In this process (no simulator) ``device="cuda"`` without a GPU is one clear error and
``device="auto"`` runs on the CPU.

The CPU kernels round the votes with FMAs where the CPU has them; the GPU path follows
whichever rounding it finds. To check the other one, run this file with
``NUMBA_CPU_NAME=generic NUMBA_CACHE_DIR=<an empty folder>`` (CPU kernels compiled without
FMA; the first run compiles them, about a minute).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble
from ppp_zoo.postprocess import assembly as A

TESTS = Path(__file__).parent

#: runs in the subprocess; prints one JSON line with the comparison of every case
SIMULATOR_SCRIPT = textwrap.dedent('''
    import json, sys, time
    sys.setswitchinterval(1e-4)  # the simulator's barriers hand the GIL between threads
    sys.path.insert(0, TESTS)
    import numpy as np
    from ppp_zoo.data.targets import instance_targets
    from ppp_zoo.postprocess import AssemblyParams, CandidatePatches
    from ppp_zoo.postprocess import assembly as A
    from ppp_zoo.postprocess import _cuda_kernels as CK
    from test_assembly_kernels import _noisy

    assert CK.SIM
    CK.MAX_BLOCK_BYTES = 20000  # several slabs, a ring that wraps, several edge chunks

    lab2 = np.zeros((16, 16), np.int32)
    lab2[1:7, 1:8] = 1; lab2[7:14, 2:9] = 2; lab2[3:12, 9:15] = 3; lab2[12:16, 10:16] = 4
    lab3 = np.zeros((6, 8, 8), np.int32)
    lab3[0:4, 0:4, 0:5] = 1; lab3[0:4, 4:8, 0:5] = 2; lab3[2:6, 1:7, 5:8] = 3
    masks = np.zeros((3, 16, 16), bool)
    masks[0, 2:9, 1:12] = True; masks[1, 6:15, 6:10] = True; masks[2, 10:15, 1:8] = True
    noisy = dict(numinst_thresholds=(0.5, 0.4))
    cases = {
        "2d_exact": (lab2, (5, 5), dict(partition="mws", **noisy)),
        "2d_fast": (lab2, (5, 5), dict(fast=True, **noisy)),
        "3d_exact": (lab3, (3, 3, 3), dict(patch_threshold=0.5, partition="mws", **noisy)),
        "overlapping": (masks, (5, 5), dict(overlapping=True, partition="mws", **noisy)),
    }
    out = {"rounding": CK.cpu_vote_rounding()}
    for name, (labels, shape, kw) in cases.items():
        t0 = time.perf_counter()
        params = AssemblyParams(patchshape=shape, **kw)
        numinst, patches = _noisy(*instance_targets(labels, shape,
                                                    overlapping=labels.dtype == bool), seed=3)
        prep, cand = A.prepare(numinst, patches, params)
        c_cpu = A.compute_consensus(prep, cand, "cpu")
        c_gpu = A.compute_consensus(prep, cand, "cuda")
        plan = dict(CK.last_plan)
        ranked, rounded = A.rank_patches(cand, c_cpu)
        ranked_gpu, rounded_gpu = A.rank_patches(cand, c_gpu)
        s_cpu = A.cover_foreground(prep, ranked, "cpu")
        s_gpu = A.cover_foreground(prep, ranked, "cuda")
        e_cpu, w_cpu = A.patch_graph(prep, s_cpu, c_cpu, "cpu")
        e_gpu, w_gpu = A.patch_graph(prep, s_cpu, c_cpu, "cuda")
        plan.update(CK.last_plan)
        l_cpu = A.assemble(numinst, patches, params, device="cpu")
        r_gpu = A.assemble(numinst, patches, params, device="cuda", return_result=True)
        compact = CandidatePatches.from_dense(patches, cand)  # the candidates' patches only
        l_compact = A.assemble(numinst, compact, params, device="cuda")
        out[name] = {
            "n_candidates": int(len(cand)), "n_selected": int(len(s_cpu)),
            "n_edges": int(len(e_cpu)), "defined": int(np.isfinite(c_cpu.values).sum()),
            "consensus_bits_equal": bool(np.array_equal(c_cpu.values.view(np.int32),
                                                        c_gpu.values.view(np.int32))),
            "n_high_equal": bool(np.array_equal(c_cpu.n_high, c_gpu.n_high)),
            "score_max_diff": float(np.abs(c_cpu.scores - c_gpu.scores).max()),
            "ranking_equal": bool(np.array_equal(ranked, ranked_gpu)
                                  and np.array_equal(rounded, rounded_gpu)),
            "cover_equal": bool(np.array_equal(s_cpu, s_gpu)),
            "edges_equal": bool(np.array_equal(e_cpu, e_gpu)),
            "weight_max_diff": float(np.abs(w_cpu - w_gpu).max()) if len(w_cpu) else 0.0,
            "labels_equal": bool(l_cpu.shape == r_gpu.labels.shape
                                 and np.array_equal(l_cpu, r_gpu.labels)),
            "compact_labels_equal": bool(np.array_equal(l_cpu, l_compact)),
            "n_instances": int(r_gpu.n_instances), "device": r_gpu.device, "plan": plan,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def simulated():
    """Every case compared once, in one simulator subprocess."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", f"TESTS = {str(TESTS)!r}\n" + SIMULATOR_SCRIPT],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_case(result: dict) -> None:
    assert result["n_candidates"] > 20 and result["n_edges"] > 5 and result["defined"] > 100
    assert result["consensus_bits_equal"]
    assert result["n_high_equal"]
    # float64 sums of the same float32 values in the CPU kernels' nominal order (the CPU
    # compiler may vectorise a run's sum: last bits only)
    assert result["score_max_diff"] <= 1e-12
    assert result["ranking_equal"]
    assert result["cover_equal"]
    assert result["edges_equal"]
    assert result["weight_max_diff"] <= 1e-12
    assert result["labels_equal"]
    assert result["compact_labels_equal"]
    assert result["device"] == "cuda" and result["n_instances"] >= 2
    assert result["plan"]["consensus"]["slabs"] > 1
    assert result["plan"]["consensus"]["ring_rows"] < result["plan"]["consensus"]["rows"]
    assert result["plan"]["edges"]["chunks"] > 1


@pytest.mark.parametrize("case", ["2d_exact", "2d_fast", "3d_exact", "overlapping"])
def test_simulated_gpu_equals_cpu(simulated, case):
    _check_case(simulated[case])


def test_cpu_rounding_is_known(simulated):
    """The probe of the CPU vote kernel found one rounding per expression (an FMA or two
    roundings), so the GPU can reproduce it."""
    assert simulated["rounding"] is not None and len(simulated["rounding"]) == 4


def _float32_rounded(x: Fraction) -> np.float32:
    """The float32 nearest to x (ties to even), by exact arithmetic."""
    f = np.float32(float(x))
    for g in (np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))):
        dg, df = abs(Fraction(float(g)) - x), abs(Fraction(float(f)) - x)
        if dg < df or (dg == df and int(g.view(np.int32)) % 2 == 0):
            f = g
    return f


def test_simulator_fma_is_correctly_rounded():
    """The simulator's stand-in for cuda.fma rounds a * b + c once, like the GPU's FMA."""
    from ppp_zoo.postprocess._cuda_kernels import _fma32_exact

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 3000).astype(np.float32)
    b = rng.uniform(0, 1, 3000).astype(np.float32)
    c = -(a * b).astype(np.float32) + rng.normal(0, 1e-7, 3000).astype(np.float32)
    c[:1000] = rng.uniform(-1, 1, 1000).astype(np.float32)
    plain = 0
    for x, y, z in zip(a, b, c):
        want = _float32_rounded(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        got = _fma32_exact(x, y, z)
        assert got == want or (math.isnan(got) and math.isnan(want)), (x, y, z, got, want)
        plain += np.float32(x * y) + z != want
    assert plain > 100  # the values do tell one rounding from two


def _gpu_usable() -> bool:
    return A.resolve_device("auto") == "cuda"


@pytest.fixture
def small():
    labels = np.zeros((24, 24), np.int32)
    labels[2:10, 2:12] = 1
    labels[10:20, 4:14] = 2
    labels[5:20, 14:22] = 3
    return labels, *instance_targets(labels, (7, 7))


def test_cuda_without_gpu_is_one_clear_error(small):
    if _gpu_usable():
        pytest.skip("a CUDA GPU is usable here")
    _, numinst, patches = small
    with pytest.raises(RuntimeError, match="device='cuda'.*no CUDA GPU"):
        assemble(numinst, patches, AssemblyParams(patchshape=(7, 7)), device="cuda")
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        assemble(numinst, patches, AssemblyParams(patchshape=(7, 7)), device="gpu")


def test_auto_without_gpu_runs_on_the_cpu(small):
    if _gpu_usable():
        pytest.skip("a CUDA GPU is usable here")
    _, numinst, patches = small
    params = AssemblyParams(patchshape=(7, 7))
    auto = assemble(numinst, patches, params, return_result=True)  # device="auto"
    assert auto.device == "cpu" and auto.summary()["device"] == "cpu"
    np.testing.assert_array_equal(auto.labels, assemble(numinst, patches, params, device="cpu"))
    assert auto.n_instances == 3
