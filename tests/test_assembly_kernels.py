"""The row-by-row consensus pass and the per-node edge weights against independent versions.

- The consensus equals, value for value, that of the per-patch formulation
  (``per_patch_consensus.py``, the kernel the row-by-row pass replaced): both add the same
  float32 votes in the same order.
- Consensus, scores, graph and labels do not depend on the number of threads or on the
  height of the bands of pixel rows the pass works in.
- On images large enough for many bands, ring wrap-arounds and patches with many graph
  neighbours, every step still matches the plain reference implementation.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import reference_assembly as R
from per_patch_consensus import per_patch_consensus

from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams
from ppp_zoo.postprocess import _kernels as K
from ppp_zoo.postprocess import assembly as A

TOL = 1e-5


def _labels_2d(shape=(44, 38), seed=0) -> np.ndarray:
    """Touching rectangles of random sizes filling most of the image."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    n = 0
    for y in range(1, shape[0] - 4, 7):
        for x in range(1, shape[1] - 4, 6):
            if rng.random() < 0.8:
                n += 1
                lab[y:y + rng.integers(4, 9), x:x + rng.integers(4, 8)] = n
    return lab


def _labels_3d() -> np.ndarray:
    lab = np.zeros((7, 20, 12), np.int32)
    lab[1:5, 1:8, 1:6] = 1
    lab[1:5, 1:8, 6:11] = 2
    lab[2:7, 8:15, 2:10] = 3
    lab[0:4, 15:20, 0:7] = 4
    return lab


def _noisy(numinst, patches, seed):
    rng = np.random.default_rng(seed)
    p = np.clip(patches + rng.normal(0.0, 0.15, patches.shape), 0.0, 1.0)
    flips = rng.random(patches.shape) < 0.1
    p[flips] = 1.0 - p[flips]
    logits = 3.0 * numinst + rng.normal(0.0, 1.2, numinst.shape)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32), p.astype(np.float32)


CASES = {
    "gt2d": (lambda: instance_targets(_labels_2d(), (7, 7)), dict(patchshape=(7, 7))),
    "noisy2d": (lambda: _noisy(*instance_targets(_labels_2d(seed=1), (7, 7)), seed=2),
                dict(patchshape=(7, 7), partition="mws", numinst_thresholds=(0.5, 0.4))),
    "noisy2d_fast": (lambda: _noisy(*instance_targets(_labels_2d(seed=3), (7, 5)), seed=4),
                     dict(patchshape=(7, 5), fast=True, numinst_thresholds=(0.5, 0.4))),
    "gt3d": (lambda: instance_targets(_labels_3d(), (3, 5, 3)),
             dict(patchshape=(3, 5, 3), patch_threshold=0.5)),
    "noisy3d_lowth": (lambda: _noisy(*instance_targets(_labels_3d(), (3, 3, 3)), seed=5),
                      dict(patchshape=(3, 3, 3), patch_threshold=0.4, numinst_thresholds=(0.5, 0.4))),
}


def _prepare(name):
    build, kw = CASES[name]
    numinst, patches = build()
    params = AssemblyParams(**kw)
    patches = np.ascontiguousarray(patches, np.float32)
    cls = A.foreground_classes(numinst, patches, params)
    cand = np.flatnonzero(A.candidate_mask(cls, params))
    return numinst, patches, params, cls, cand, A.Prepared(patches, cls, params)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("band_rows", [1, 3, 16])
def test_consensus_equals_per_patch_formulation(name, band_rows, monkeypatch):
    monkeypatch.setattr(A, "BAND_ROWS", band_rows)
    _, patches, params, cls, cand, prep = _prepare(name)
    got = A.compute_consensus(prep, cand).values
    # fast mode: the consensus of the grid problem (pixels on the stride grid only)
    want = per_patch_consensus(*(prep.on_grid(cand) if prep.stride > 1 else (prep, cand)))
    assert np.isnan(got).sum() > 0 and (~np.isnan(got)).sum() > 0
    np.testing.assert_array_equal(got, want)  # NaN where undefined on both sides


@pytest.mark.parametrize("name", list(CASES))
def test_independent_of_threads_and_bands(name, monkeypatch):
    numinst, patches, params, cls, cand, prep = _prepare(name)
    runs = []
    threads = numba.get_num_threads()
    try:
        for n_threads, band_rows in ((1, 16), (threads, 16), (threads, 2), (1, 5)):
            numba.set_num_threads(n_threads)
            monkeypatch.setattr(A, "BAND_ROWS", band_rows)
            cons = A.compute_consensus(prep, cand)
            ranked, _ = A.rank_patches(cand, cons)
            sel = A.cover_foreground(prep, ranked)
            edges, weights = A.patch_graph(prep, sel, cons)
            runs.append((cons, ranked, edges, weights, A.assemble(numinst, patches, params)))
    finally:
        numba.set_num_threads(threads)
    first = runs[0]
    for run in runs[1:]:
        np.testing.assert_array_equal(run[0].values, first[0].values)
        np.testing.assert_allclose(run[0].scores, first[0].scores, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(run[1], first[1])
        np.testing.assert_array_equal(run[2], first[2])
        np.testing.assert_allclose(run[3], first[3], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(run[4], first[4])


@pytest.mark.parametrize("name", ["gt2d", "noisy2d_fast", "gt3d"])
def test_bands_are_shared_by_work(name):
    """The consensus workers get consecutive bands with about equal (pixel, centre) pairs,
    counted here by brute force."""
    _, _, _, _, cand, prep = _prepare(name)
    geo = prep.geo
    cand_mask = np.zeros(geo.shape, bool)
    cand_mask.reshape(-1)[cand] = True
    centres = np.argwhere(cand_mask)
    want = np.zeros(geo.shape[1], np.int64)
    for u in np.argwhere(geo.unpad(prep.vidx).reshape(geo.shape) >= 0):
        want[u[1]] += np.all(np.abs(centres - u) <= geo.r, axis=1).sum()
    assert want.sum() > 0
    np.testing.assert_array_equal(K.row_work(prep.vidx, cand_mask.view(np.uint8), prep.r), want)
    bands = np.append(np.arange(0, geo.shape[1], 3), geo.shape[1])
    band_work = np.add.reduceat(want, bands[:-1])
    for n in (1, 2, 3):
        first = A._share_bands(prep, cand_mask, bands, n)
        assert len(first) == n + 1 and first[0] == 0 and first[-1] == len(bands) - 1
        assert np.all(np.diff(first) >= 0)
        shares = np.array([band_work[first[i]:first[i + 1]].sum() for i in range(n)])
        # each boundary is within one band of its equal-work position
        cum = np.cumsum(shares)[:-1]
        ideal = band_work.sum() * np.arange(1, n) / n
        assert np.all(np.abs(cum - ideal) <= band_work.max())


def _assert_close_dicts(got: dict, want: dict, what: str):
    assert set(got) == set(want), f"{what}: keys differ"
    worst = max((abs(got[k] - want[k]) for k in want), default=0.0)
    assert worst <= TOL, f"{what}: largest difference {worst:.3g}"


@pytest.mark.parametrize("name", ["noisy2d", "noisy2d_fast", "gt3d"])
def test_larger_images_match_reference(name, monkeypatch):
    """Several bands (BAND_ROWS = 4), ring wrap-around, many graph neighbours."""
    monkeypatch.setattr(A, "BAND_ROWS", 4)
    _, patches, params, cls, cand, prep = _prepare(name)
    cons = A.compute_consensus(prep, cand)
    ref_cons = R.ref_consensus(patches, cls, cand.tolist(), params)
    _assert_close_dicts(cons.to_dict(), ref_cons, "consensus")
    ref_sc = R.ref_scores(patches, cls, cand.tolist(), ref_cons, params)
    np.testing.assert_allclose(cons.scores, [ref_sc[c][0] for c in cand.tolist()], atol=TOL)
    assert cons.n_high.tolist() == [ref_sc[c][1] for c in cand.tolist()]
    ranked, _ = A.rank_patches(cand, cons)
    sel = A.cover_foreground(prep, ranked)
    edges, weights = A.patch_graph(prep, sel, cons)
    assert len(edges) > 2 * len(sel)  # patches with several neighbours
    got = {(int(a), int(b)): float(w) for (a, b), w in zip(edges, weights)}
    _assert_close_dicts(got, R.ref_graph(patches, cls, ref_cons, sel.tolist(), params),
                        "edge weights")
