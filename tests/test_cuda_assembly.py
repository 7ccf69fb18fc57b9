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

``device="auto"`` takes the GPU only after the self-check (the CUDA kernels' results on a
small assembly equal to the CPU kernels'): a second simulator subprocess shows that a
passing check lets ``auto`` pick the GPU where numba reports one (the availability probe
patched), that a check whose kernel result is wrong (or whose kernels raise) leaves
``auto`` on the CPU, and that every result reports the device whose kernels ran (counted
by wrapping the CUDA host functions). The verdict's record file is checked in this process.

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
        # fast mode votes on its grid: twice the size, so that the grid problem has
        # 5 x 5 patches on 16 x 16 pixels
        "2d_fast": (np.kron(lab2, np.ones((2, 2), np.int32)), (9, 9),
                    dict(fast=True, partition="mws", **noisy)),
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


# --------------------------------------------------------------------------- self-check
#: runs in a simulator subprocess; prints one JSON line with what each case observed
SELF_CHECK_SCRIPT = textwrap.dedent('''
    import json, sys, warnings
    sys.setswitchinterval(1e-4)
    import numpy as np
    from ppp_zoo.data.targets import instance_targets
    from ppp_zoo.postprocess import AssemblyParams
    from ppp_zoo.postprocess import _cuda_kernels as CK
    from ppp_zoo.postprocess import _cuda_probe as P
    from ppp_zoo.postprocess import assembly as A

    assert P.SIM
    calls = {"check": 0, "compute_consensus": 0, "cover_foreground": 0, "edge_weight_parts": 0}
    real_check = A._run_self_check

    def counted_check():
        calls["check"] += 1
        return real_check()

    A._run_self_check = counted_check
    for name in ("compute_consensus", "cover_foreground", "edge_weight_parts"):
        def counted(*args, _name=name, _real=getattr(CK, name), **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        setattr(CK, name, counted)

    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:7] = 1; labels[6:11, 2:8] = 2; labels[2:10, 8:12] = 3
    numinst, patches = instance_targets(labels, (3, 3))
    params = AssemblyParams(patchshape=(3, 3))
    cpu_labels = A.assemble(numinst, patches, params, device="cpu")

    def run(device):
        """assemble: (reported device, CUDA host functions called, labels equal the CPU's)"""
        before = dict(calls)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = A.assemble(numinst, patches, params, device=device, return_result=True)
        ran = sorted(k for k in calls if k != "check" and calls[k] > before[k])
        return {"device": result.device, "summary_device": result.summary()["device"],
                "ran": ran, "labels_equal": bool(np.array_equal(result.labels, cpu_labels)),
                "warnings": [str(w.message) for w in caught]}

    out = {}
    P.unavailable_reason = lambda: "no CUDA GPU: numba.cuda finds no NVIDIA GPU (patched)"
    out["no_gpu"] = {"resolved": A.resolve_device("auto"), "checks": calls["check"],
                     "assemble": run("auto")}

    P.unavailable_reason = lambda: None  # numba reports a GPU (the simulator's)
    first = A.resolve_device("auto")
    out["passing"] = {"resolved": first, "again": A.resolve_device("auto"),
                      "checks": calls["check"], "verdict": A.cuda_self_check(),
                      "assemble": run("auto")}

    real_consensus = CK.compute_consensus

    def wrong_consensus(prep, cand_flat):
        """The CPU's consensus with one value off by one unit in the last place."""
        cons = A.compute_consensus(prep, cand_flat, "cpu")
        i = np.flatnonzero(np.isfinite(cons.values))[0]
        flat = cons.values.reshape(-1)
        flat[i] = np.nextafter(flat[i], np.float32(2))
        cons.device = "cuda"
        return cons

    P.forget_self_check()
    CK.compute_consensus = wrong_consensus
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = A.resolve_device("auto")
    out["failing"] = {"resolved": resolved, "verdict": A.cuda_self_check(),
                      "warnings": [str(w.message) for w in caught]}
    CK.compute_consensus = real_consensus
    out["failing"]["assemble"] = run("auto")  # the verdict holds for the process
    out["failing"]["cuda_asked"] = run("cuda")  # an explicit request skips the check

    def broken(*args, **kwargs):
        raise RuntimeError("the driver lost the device (patched)")

    P.forget_self_check()
    CK.compute_consensus = broken
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["raising"] = {"resolved": A.resolve_device("auto"), "verdict": A.cuda_self_check()}
    CK.compute_consensus = real_consensus

    CK.cpu_vote_rounding = lambda: None  # the GPU cannot reproduce the CPU's rounding
    out["rounding_fallback"] = run("cuda")
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def self_checked():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", SELF_CHECK_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_auto_without_a_gpu_runs_no_self_check(self_checked):
    case = self_checked["no_gpu"]
    assert case["resolved"] == "cpu" and case["checks"] == 0
    assert case["assemble"]["device"] == "cpu" and case["assemble"]["ran"] == []


def test_a_passing_self_check_lets_auto_take_the_gpu(self_checked):
    case = self_checked["passing"]
    assert case["resolved"] == "cuda" and case["again"] == "cuda" and case["verdict"] is None
    assert case["checks"] == 1  # once per process
    run = case["assemble"]
    assert run["device"] == "cuda" and run["summary_device"] == "cuda"
    assert run["ran"] == ["compute_consensus", "cover_foreground", "edge_weight_parts"]
    assert run["labels_equal"] and run["warnings"] == []


def test_a_failing_self_check_keeps_auto_on_the_cpu(self_checked):
    case = self_checked["failing"]
    assert case["resolved"] == "cpu"
    assert "consensus values differ" in case["verdict"]
    [warning] = case["warnings"]
    assert "self-check" in warning and "on the CPU" in warning
    run = case["assemble"]
    assert run["device"] == "cpu" and run["summary_device"] == "cpu" and run["ran"] == []
    assert run["labels_equal"] and run["warnings"] == []  # warned once, when it failed
    asked = case["cuda_asked"]
    assert asked["device"] == "cuda" and "compute_consensus" in asked["ran"]


def test_a_self_check_that_raises_keeps_auto_on_the_cpu(self_checked):
    case = self_checked["raising"]
    assert case["resolved"] == "cpu"
    assert "could not run" in case["verdict"] and "driver lost the device" in case["verdict"]


def test_the_reported_device_is_where_the_kernels_ran(self_checked):
    """The consensus on the CPU (the GPU cannot reproduce the CPU's rounding), cover and
    graph on the GPU: the result says so, with a warning."""
    run = self_checked["rounding_fallback"]
    assert run["ran"] == ["cover_foreground", "edge_weight_parts"]
    assert run["device"] == "cuda+cpu" and run["summary_device"] == "cuda+cpu"
    assert run["labels_equal"]
    assert any("consensus and scores run on the CPU" in w for w in run["warnings"])


@pytest.fixture
def fresh_verdict(monkeypatch, tmp_path):
    """An empty verdict for this process and a record file under tmp_path."""
    from ppp_zoo.postprocess import _cuda_probe as P

    monkeypatch.setattr(P, "_VERDICT", {})
    monkeypatch.setattr(P, "record_path", lambda: tmp_path / "cache" / P.RECORD_FILE)
    monkeypatch.setattr(P, "_record_key", lambda: "Fake GPU (compute capability 9.0); "
                                                  "numba 0.0; kernels 0123")
    return P


def test_the_verdict_is_recorded_per_gpu_numba_and_kernels(fresh_verdict, monkeypatch):
    P = fresh_verdict
    runs = []
    assert P.self_check(lambda: runs.append(1)) is None and runs == [1]
    assert P.self_check(lambda: runs.append(2)) is None and runs == [1]  # this process
    record = json.loads(P.record_path().read_text())
    assert record == {P._record_key(): {"passed": True, "reason": None}}
    P.forget_self_check()
    assert P.self_check(lambda: runs.append(3)) is None and runs == [1]  # from the file

    monkeypatch.setattr(P, "_record_key", lambda: "Other GPU; numba 0.0; kernels 0123")
    P.forget_self_check()
    with pytest.warns(RuntimeWarning, match="failed their self-check.*labels differ"):
        assert P.self_check(lambda: "the labels differ") == "the labels differ"
    P.forget_self_check()
    with pytest.warns(RuntimeWarning):
        assert P.self_check(lambda: pytest.fail("read from the file")) == "the labels differ"
    assert len(json.loads(P.record_path().read_text())) == 2


def test_a_self_check_that_raises_is_not_recorded(fresh_verdict):
    P = fresh_verdict

    def broken():
        raise RuntimeError("no context")

    with pytest.warns(RuntimeWarning, match="could not run"):
        assert "could not run" in P.self_check(broken)
    assert not P.record_path().exists()


def test_auto_with_a_gpu_and_a_failed_self_check_runs_on_the_cpu(fresh_verdict, monkeypatch,
                                                                 small):
    """In this process: numba reports a GPU, the check finds a difference."""
    P = fresh_verdict
    _, numinst, patches = small
    monkeypatch.setattr(P, "unavailable_reason", lambda: None)
    monkeypatch.setattr(A, "_run_self_check", lambda: "the CUDA kernels' patch scores differ")
    with pytest.warns(RuntimeWarning, match="patch scores differ"):
        result = assemble(numinst, patches, AssemblyParams(patchshape=(7, 7)),
                          return_result=True)
    assert result.device == "cpu" and result.summary()["device"] == "cpu"
    assert result.n_instances == 3
