"""Public API of ppp_zoo.postprocess: parameters, validation, empty input, independence."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble, parse_shape


@pytest.fixture
def small():
    labels = np.zeros((40, 40), np.int32)
    labels[3:15, 3:15] = 1
    labels[15:27, 3:15] = 2  # touches 1
    labels[10:30, 20:35] = 3
    numinst, patches = instance_targets(labels, (9, 9))
    return labels, numinst, patches


def test_defaults_are_the_papers():
    p = AssemblyParams(patchshape=(25, 25))
    assert (p.patch_threshold, p.fc_threshold, p.partition) == (0.9, 0.5, "cc")
    assert p.background_threshold == pytest.approx(0.1)
    assert AssemblyParams(patchshape=(9, 9, 9), patch_threshold=0.3).background_threshold == 0.3
    assert AssemblyParams.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("kwargs,msg", [
    ({"patchshape": (4, 5)}, "odd"),
    ({"patchshape": (5,)}, "2 or 3"),
    ({"patchshape": (5, 5), "patch_threshold": 1.0}, "patch_threshold"),
    ({"patchshape": (5, 5), "partition": "watershed"}, "partition"),
    ({"patchshape": (5, 5), "min_size": -1}, "min_size"),
])
def test_bad_params(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        AssemblyParams(**kwargs)


def test_unknown_param_key():
    with pytest.raises(ValueError, match="unknown assembly parameter"):
        AssemblyParams.from_dict({"patchshape": [5, 5], "treshold": 0.5})


def test_parse_shape():
    assert parse_shape("25x25") == (25, 25)
    assert parse_shape("9X9x9") == (9, 9, 9)
    with pytest.raises(ValueError, match="25x25"):
        parse_shape("25,25")


def test_recovers_touching_instances(small):
    labels, numinst, patches = small
    for partition in ("cc", "mws"):
        out = assemble(numinst, patches, AssemblyParams(patchshape=(9, 9), partition=partition))
        assert out.dtype == np.int32 and out.shape == labels.shape
        # same partition of the pixels, ids may differ
        pairs = set(zip(out.ravel().tolist(), labels.ravel().tolist()))
        assert len(pairs) == 4 and (0, 0) in pairs


def test_inputs_not_mutated(small):
    _, numinst, patches = small
    before = (numinst.copy(), patches.copy())
    assemble(numinst, patches, AssemblyParams(patchshape=(9, 9)))
    np.testing.assert_array_equal(numinst, before[0])
    np.testing.assert_array_equal(patches, before[1])


def test_without_numinst_uses_patch_centre(small):
    labels, _, patches = small
    out = assemble(None, patches, AssemblyParams(patchshape=(9, 9)))
    assert len(np.unique(out)) == 4


def test_float64_and_uint8_inputs(small):
    labels, numinst, patches = small
    ref = assemble(numinst, patches, AssemblyParams(patchshape=(9, 9)))
    np.testing.assert_array_equal(
        assemble(numinst.astype(np.float64), patches.astype(np.float64),
                 AssemblyParams(patchshape=(9, 9))), ref)
    np.testing.assert_array_equal(
        assemble(numinst.astype(np.uint8), patches.astype(np.uint8),
                 AssemblyParams(patchshape=(9, 9))), ref)


def test_empty_foreground_gives_no_instances():
    numinst = np.zeros((3, 20, 20), np.float32)
    numinst[0] = 1
    patches = np.zeros((25, 20, 20), np.float32)
    res = assemble(numinst, patches, AssemblyParams(patchshape=(5, 5)), return_result=True)
    assert res.n_instances == 0 and res.labels.shape == (20, 20) and res.labels.max() == 0
    masks = assemble(numinst, patches, AssemblyParams(patchshape=(5, 5), overlapping=True))
    assert masks.shape == (0, 20, 20)


def test_min_size_removes_small_instances(small):
    labels, numinst, patches = small
    out = assemble(numinst, patches, AssemblyParams(patchshape=(9, 9), min_size=200))
    assert out.max() == 1  # only the 300-pixel instance stays
    assert (out > 0).sum() == (labels == 3).sum()


@pytest.mark.parametrize("change,msg", [
    (lambda n, p: (n, p[:-1]), "channels but patchshape"),
    (lambda n, p: (n[:2], p), "numinst must have shape"),
    (lambda n, p: (n, p[:, None]), "patches must have shape"),
    (lambda n, p: (n, np.where(p > 0, np.nan, p)), "NaN"),
    (lambda n, p: (np.where(n > 0, np.inf, n), p), "NaN or infinite"),
])
def test_bad_inputs(small, change, msg):
    _, numinst, patches = small
    n, p = change(numinst, patches)
    with pytest.raises(ValueError, match=msg):
        assemble(n, p, AssemblyParams(patchshape=(9, 9)))


def test_import_without_torch():
    """The postprocessing package must import and run with torch unimportable."""
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        import ppp_zoo.postprocess as pp
        numinst = np.zeros((3, 12, 12), np.float32); numinst[1] = 1
        patches = np.ones((9, 12, 12), np.float32)
        out = pp.assemble(numinst, patches, pp.AssemblyParams(patchshape=(3, 3)))
        assert out.max() == 1
        bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        other = [m for m in sys.modules if m.startswith("ppp_zoo") and
                 not (m == "ppp_zoo" or m.startswith("ppp_zoo.postprocess"))]
        assert not bad and not other, (bad, other)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_postprocess_imports_only_numpy_numba_scipy():
    """Every import in ppp_zoo/postprocess is the standard library, numpy, numba or scipy."""
    import ast
    import pathlib

    import ppp_zoo.postprocess as pp

    allowed = {"numpy", "numba", "scipy"} | set(sys.stdlib_module_names)
    for path in pathlib.Path(pp.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_cache_dir_fallback(tmp_path, monkeypatch):
    from ppp_zoo.postprocess import _cache

    readonly = tmp_path / "site-packages" / "ppp_zoo" / "postprocess"
    monkeypatch.setattr(_cache, "_writable", lambda folder: not str(folder).startswith(str(readonly)))
    chosen = _cache.choose_cache_dir(readonly, environ={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert chosen == tmp_path / "c" / "ppp_zoo" / "numba"
    assert _cache.choose_cache_dir(readonly, environ={"NUMBA_CACHE_DIR": "/x"}) is None
    monkeypatch.setattr(_cache, "_writable", lambda folder: True)
    assert _cache.choose_cache_dir(readonly, environ={}) is None


# --------------------------------------------------------------------------- compact input
def _noisy_targets(labels, shape, seed=0):
    """GT targets with noise, so that many candidates compete (as with a real network)."""
    numinst, patches = instance_targets(labels, shape)
    rng = np.random.default_rng(seed)
    patches = np.clip(patches + rng.normal(0, 0.15, patches.shape), 0, 1).astype(np.float32)
    return numinst, patches


@pytest.mark.parametrize("ndim,fast,partition", [(2, False, "cc"), (2, True, "mws"),
                                                 (3, False, "mws"), (3, True, "cc")])
def test_candidate_patches_give_the_dense_labels(ndim, fast, partition):
    from ppp_zoo.postprocess import CandidatePatches
    from ppp_zoo.postprocess.assembly import candidate_mask, foreground_classes

    if ndim == 2:
        labels = np.zeros((48, 44), np.int32)
        labels[3:15, 3:15] = 1
        labels[15:27, 3:17] = 2
        labels[10:30, 20:35] = 3
        labels[32:46, 8:40] = 4
        shape = (9, 9)
    else:
        labels = np.zeros((10, 20, 18), np.int32)
        labels[1:6, 2:9, 2:9] = 1
        labels[1:6, 9:17, 2:10] = 2
        labels[4:10, 4:14, 10:17] = 3
        shape = (5, 5, 5)
    numinst, patches = _noisy_targets(labels, shape)
    params = AssemblyParams(patchshape=shape, patch_threshold=0.6, fc_threshold=0.6,
                            numinst_thresholds=(0.5, 0.5), partition=partition, fast=fast)
    cand = np.flatnonzero(candidate_mask(foreground_classes(numinst, None, params), params))
    compact = CandidatePatches.from_dense(patches, cand)
    assert compact.shape == patches.shape and compact.values.shape == (patches.shape[0], len(cand))
    expected = assemble(numinst, patches, params)
    assert expected.max() >= 3
    np.testing.assert_array_equal(assemble(numinst, compact, params), expected)
    # the dense array it stands for holds the candidates' patches and zeros
    dense = compact.dense()
    assert np.array_equal(dense.reshape(len(dense), -1)[:, cand],
                          patches.reshape(len(patches), -1)[:, cand])
    assert not np.delete(dense.reshape(len(dense), -1), cand, axis=1).any()


def test_candidate_patches_crop_and_errors():
    from ppp_zoo.postprocess import CandidatePatches

    rng = np.random.default_rng(1)
    dense = rng.random((9, 12, 10)).astype(np.float32)
    flat = np.sort(rng.choice(120, 30, replace=False))
    cp = CandidatePatches.from_dense(dense, flat)
    crop = cp[:, 2:9, 3:10]
    kept = cp.dense()[:, 2:9, 3:10]
    assert crop.shape == (9, 7, 7) and np.array_equal(crop.dense(), kept)
    assert crop.values.shape[1] == int((kept != 0).any(axis=0).sum())
    with pytest.raises(IndexError, match="space only"):
        cp[0]
    with pytest.raises(ValueError, match="strictly increasing"):
        CandidatePatches(dense.reshape(9, -1)[:, :2], np.array([5, 5]), (12, 10))
    with pytest.raises(ValueError, match=r"shape \(P, n\)"):
        CandidatePatches(dense.reshape(9, -1)[:, :3], np.array([1, 2]), (12, 10))
    # an assembly that needs patches the compact input lacks says so
    labels = np.zeros((20, 20), np.int32)
    labels[2:12, 2:12] = 1
    numinst, patches = instance_targets(labels, (5, 5))
    params = AssemblyParams(patchshape=(5, 5), fast=True)
    grid = np.zeros((20, 20), bool)
    grid[::2, ::2] = True
    compact = CandidatePatches.from_dense(patches, np.flatnonzero(grid & (labels > 0)))
    assert assemble(numinst, compact, params).max() == 1
    with pytest.raises(ValueError, match="lack .* candidate centres"):
        assemble(numinst, compact, params.replace(fast=False))
    with pytest.raises(ValueError, match="need numinst"):
        assemble(None, compact, params)


_CONCURRENT = """
import contextlib, sys, threading
import numpy as np
from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams, assemble
import ppp_zoo.postprocess.assembly as assembly
if sys.argv[1] == "unguarded":
    assembly.parallel_section = contextlib.nullcontext
rng = np.random.default_rng(0)
labels = np.zeros((120, 120), np.int32)
for k in range(1, 25):
    y, x = rng.integers(8, 112, 2)
    labels[y - 6:y + 6, x - 6:x + 6] = k
numinst, patches = instance_targets(labels, (9, 9))
params = AssemblyParams(patchshape=(9, 9))
want = assemble(numinst, patches, params)
same = []
def work():
    same.append(all(np.array_equal(assemble(numinst, patches, params), want) for _ in range(10)))
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
import numba
print(numba.threading_layer(), same)
"""


def test_concurrent_assemblies_under_numba_workqueue_layer():
    """Three threads assembling at once (as the napari Segment and Train workers can) under
    numba's workqueue threading layer: serialised by the postprocessing, they all give the
    labels of one call; unguarded, numba aborts the process (what the guard prevents)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    run = [subprocess.run([sys.executable, "-c", _CONCURRENT, mode], capture_output=True,
                          text=True, env=env, timeout=600) for mode in ("guarded", "unguarded")]
    assert run[0].returncode == 0 and run[0].stdout.split() == ["workqueue", "[True,",
                                                                "True,", "True]"], run[0].stderr
    assert run[1].returncode != 0 and "workqueue threading layer is not threadsafe" in \
        run[1].stdout + run[1].stderr


def test_averaged_decoder_turns_each_patch_back_before_averaging():
    """AveragedDecoder: the identity alone is the head itself; with the x-mirror as well, a
    pixel's stacked features give the mean of its patch and of the mirrored one."""
    from ppp_zoo.postprocess import PatchHead
    from ppp_zoo.postprocess.tta import AveragedDecoder, transforms

    rng = np.random.default_rng(5)
    head = PatchHead(rng.normal(size=(15, 4)).astype(np.float32),
                     rng.normal(size=15).astype(np.float32), (3, 5))
    features = rng.normal(size=(6, 4)).astype(np.float32)
    plain = head.decode_pixels(features)
    same = AveragedDecoder(head, ((( False, False), False),))
    np.testing.assert_allclose(same.decode_pixels(features), plain, rtol=1e-6)
    mirrored = AveragedDecoder(head, (((False, False), False), ((False, True), False)))
    got = mirrored.decode_pixels(np.concatenate([features, features], axis=1))
    want = (plain.reshape(6, 3, 5) + plain.reshape(6, 3, 5)[:, :, ::-1]) / 2
    np.testing.assert_allclose(got, want.reshape(6, 15), rtol=1e-6)
    assert len(transforms((3, 5))) == 4  # no transpose for a non-square patch
    with pytest.raises(ValueError, match="does not fit the patch shape"):
        AveragedDecoder(head, (((False, False), True),))
