"""Step-by-step comparison of the numba assembly with the plain reference implementation.

``tests/reference_assembly.py`` implements every step from the definitions in the
``ppp_zoo.postprocess`` docstring with Python loops in float64. Here each numba step is
compared with its reference counterpart on tiny 2D and 3D inputs. Because float32 and
float64 scores can order near-ties differently, every later step is fed the *same* input
on both sides (the numba ranking, selection, graph, components).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference_assembly as R

from ppp_zoo.data.targets import instance_targets
from ppp_zoo.postprocess import AssemblyParams
from ppp_zoo.postprocess import assembly as A

TOL = 1e-5


# --------------------------------------------------------------------------- inputs
def _labels_2d() -> np.ndarray:
    """16x16 label image with touching instances (and one at the border)."""
    lab = np.zeros((16, 16), np.int32)
    lab[2:8, 2:8] = 1
    lab[2:8, 8:13] = 2
    lab[8:14, 3:10] = 3
    lab[9:15, 10:15] = 4
    lab[0:2, 13:16] = 5
    lab[14:16, 0:2] = 6
    return lab


def _labels_3d() -> np.ndarray:
    """8x8x8 label volume with touching instances."""
    lab = np.zeros((8, 8, 8), np.int32)
    lab[1:5, 1:5, 1:4] = 1
    lab[1:5, 1:5, 4:7] = 2
    lab[5:8, 2:7, 1:7] = 3
    lab[0:2, 6:8, 6:8] = 4
    return lab


def _crossing_bars() -> np.ndarray:
    """Two crossing bars as a (2, 16, 16) mask stack (the crossing is an overlap)."""
    masks = np.zeros((2, 16, 16), bool)
    masks[0, 6:10, 1:15] = True
    masks[1, 1:15, 6:10] = True
    return masks


def _noisy(numinst, patches, seed, sigma=0.15, flip=0.1):
    """Clipped Gaussian noise and ~10% flipped patch values; smeared numinst."""
    rng = np.random.default_rng(seed)
    p = np.clip(patches + rng.normal(0.0, sigma, patches.shape), 0.0, 1.0)
    flips = rng.random(patches.shape) < flip
    p[flips] = 1.0 - p[flips]
    logits = 3.0 * numinst + rng.normal(0.0, 1.2, numinst.shape)
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    n = e / e.sum(axis=0, keepdims=True)
    return n.astype(np.float32), p.astype(np.float32)


def _gt2d(ps=(5, 5)):
    return instance_targets(_labels_2d(), ps)


def _gt3d(ps=(3, 3, 3)):
    return instance_targets(_labels_3d(), ps)


def _overlap(noisy=False):
    numinst, patches = instance_targets(_crossing_bars(), (5, 5), overlapping=True)
    if noisy:
        numinst, patches = _noisy(numinst, patches, seed=7, sigma=0.1, flip=0.05)
    return numinst, patches


NOISY_T = (0.5, 0.4)

CASES = {
    # (a) GT targets with touching instances
    "gt2d_cc": (lambda: _gt2d(), dict(patchshape=(5, 5))),
    "gt2d_mws_minsize": (lambda: _gt2d(), dict(patchshape=(5, 5), partition="mws", min_size=5)),
    "gt2d_nonsquare": (lambda: instance_targets(_labels_2d()[:12], (3, 7)),
                       dict(patchshape=(3, 7), partition="mws")),
    "gt3d_cc": (lambda: _gt3d(), dict(patchshape=(3, 3, 3), patch_threshold=0.5)),
    "gt3d_aniso_mws": (lambda: instance_targets(_labels_3d()[:5], (1, 3, 5)),
                       dict(patchshape=(1, 3, 5), partition="mws")),
    # (b) noisy outputs: real-valued votes, H/L/neither, overlap pixels from smeared numinst
    "noisy2d_mws": (lambda: _noisy(*_gt2d(), seed=1),
                    dict(patchshape=(5, 5), partition="mws", numinst_thresholds=NOISY_T)),
    "noisy2d_cc_nocrop": (lambda: _noisy(*_gt2d(), seed=2),
                          dict(patchshape=(5, 5), numinst_thresholds=NOISY_T, crop_to_fg=False,
                               fc_threshold=0.7)),
    "noisy2d_default_t": (lambda: _noisy(*_gt2d(), seed=3), dict(patchshape=(5, 5), min_size=12)),
    "noisy3d_mws": (lambda: _noisy(*_gt3d(), seed=4),
                    dict(patchshape=(3, 3, 3), partition="mws", patch_threshold=0.8,
                         numinst_thresholds=NOISY_T)),
    "noisy2d_no_numinst": (lambda: (None, _noisy(*_gt2d(), seed=5)[1]),
                           dict(patchshape=(5, 5), partition="mws")),
    # (c) overlapping masks
    "overlap_gt": (lambda: _overlap(), dict(patchshape=(5, 5), overlapping=True)),
    "overlap_gt_mws": (lambda: _overlap(),
                       dict(patchshape=(5, 5), overlapping=True, partition="mws")),
    "overlap_noisy": (lambda: _overlap(noisy=True),
                      dict(patchshape=(5, 5), overlapping=True, partition="mws", min_size=25,
                           numinst_thresholds=NOISY_T)),
    "overlap_noisy_lowfc": (lambda: _overlap(noisy=True),
                            dict(patchshape=(5, 5), overlapping=True, fc_threshold=0.2,
                                 numinst_thresholds=NOISY_T)),
    # (d) fast mode
    "fast_gt2d": (lambda: _gt2d(), dict(patchshape=(5, 5), fast=True)),
    "fast_noisy2d_s3": (lambda: _noisy(*_gt2d((7, 7)), seed=6),
                        dict(patchshape=(7, 7), fast=True, fast_stride=3, partition="mws",
                             numinst_thresholds=NOISY_T)),
    # a stride beyond the patch radius: reduced to it (5x5, stride 3 -> 2; 3x3x3 -> exact)
    "fast_noisy2d_s3_reduced": (lambda: _noisy(*_gt2d(), seed=7),
                                dict(patchshape=(5, 5), fast=True, fast_stride=3,
                                     numinst_thresholds=NOISY_T)),
    "fast_gt3d_reduced": (lambda: _gt3d(), dict(patchshape=(3, 3, 3), fast=True)),
    "fast_noisy3d": (lambda: _noisy(*_gt3d((5, 5, 5)), seed=8),
                     dict(patchshape=(5, 5, 5), fast=True, numinst_thresholds=NOISY_T,
                          patch_threshold=0.7)),
    # (e) patch_threshold < 0.5, so BG = TH
    "lowth_gt2d": (lambda: _gt2d(), dict(patchshape=(5, 5), patch_threshold=0.4)),
    "lowth_noisy2d": (lambda: _noisy(*_gt2d(), seed=9),
                      dict(patchshape=(5, 5), patch_threshold=0.4, fc_threshold=0.3,
                           partition="mws", numinst_thresholds=NOISY_T)),
    "lowth_noisy3d": (lambda: _noisy(*_gt3d(), seed=10),
                      dict(patchshape=(3, 3, 3), patch_threshold=0.3, numinst_thresholds=NOISY_T)),
}


# --------------------------------------------------------------------------- utilities
def _numba_n_high(cons):
    """|H_c| of every candidate (in candidate order) as the numba side counted it."""
    return np.asarray(cons.n_high).tolist()


def _edges_dict(edges, weights):
    return {(int(a), int(b)): float(w) for (a, b), w in zip(edges, weights)}


def _assert_close_dicts(got: dict, want: dict, what: str):
    missing, extra = set(want) - set(got), set(got) - set(want)
    assert not missing and not extra, (
        f"{what}: keys differ; missing {sorted(missing)[:5]} ({len(missing)}), "
        f"extra {sorted(extra)[:5]} ({len(extra)})")
    worst = max((abs(got[k] - want[k]), k) for k in want) if want else (0.0, None)
    assert worst[0] <= TOL, f"{what}: largest difference {worst[0]:.3g} at {worst[1]}"


def _run_case(name):
    build, kw = CASES[name]
    numinst, patches = build()
    params = AssemblyParams(**kw)
    patches = np.ascontiguousarray(patches, np.float32)
    return numinst, patches, params


def _coverage_checks(name, patches, cls, params, cons):
    """Make sure the noisy inputs exercise what they are meant to."""
    th = params.patch_threshold
    bg = params.background_threshold
    values = np.fromiter(cons.values(), float)
    if name.startswith(("noisy", "lowth_noisy", "fast_noisy", "overlap_noisy")):
        # real-valued votes, not only +-1
        assert np.any(np.abs(np.abs(values) - 1.0) > 1e-3)
        assert np.any(values > 0) and np.any(values < 0)
        if th >= 0.5:  # values between the thresholds: neither H nor L
            assert np.any((patches > bg) & (patches < th) & (patches > 0) & (patches < 1))
        if "no_numinst" not in name:
            assert set(np.unique(cls)) == {0, 1, 2}, np.unique(cls)
    if name.startswith("overlap"):
        assert np.any(cls == 2)


# --------------------------------------------------------------------------- step by step
@pytest.mark.parametrize("name", list(CASES))
def test_steps_match_reference(name):
    numinst, patches, params = _run_case(name)
    numinst_before = None if numinst is None else numinst.copy()
    patches_before = patches.copy()

    # step 0: classes and candidates
    cls = A.foreground_classes(numinst, patches, params)
    ref_cls = R.ref_classes(numinst, patches, params)
    assert cls.dtype == np.int8
    np.testing.assert_array_equal(cls, ref_cls)
    cand = np.flatnonzero(A.candidate_mask(cls, params))
    assert cand.tolist() == R.ref_candidates(cls, params)
    assert len(cand) > 0

    # step 1: consensus
    prep = A.Prepared(patches, cls, params)
    cons = A.compute_consensus(prep, cand)
    got_cons = cons.to_dict()
    ref_cons = R.ref_consensus(patches, cls, cand.tolist(), params)
    _assert_close_dicts(got_cons, ref_cons, "consensus")
    _coverage_checks(name, patches, cls, params, ref_cons)
    # point look-ups (both argument orders) and an undefined pair
    shape = patches.shape[1:]
    for (u, v) in list(ref_cons)[:: max(1, len(ref_cons) // 50)]:
        cu, cv = np.unravel_index(u, shape), np.unravel_index(v, shape)
        assert abs(cons.value(cu, cv) - ref_cons[(u, v)]) <= TOL
        assert abs(cons.value(cv, cu) - ref_cons[(u, v)]) <= TOL
    bg_pix = np.flatnonzero(cls != 1)
    if bg_pix.size:
        u = np.unravel_index(bg_pix[0], shape)
        v = np.unravel_index(cand[0], shape)
        assert np.isnan(cons.value(u, v))

    # step 2: scores and ranking
    ref_sc = R.ref_scores(patches, cls, cand.tolist(), ref_cons, params)
    ranked, scores = A.rank_patches(cand, cons)
    assert sorted(ranked.tolist()) == cand.tolist()
    got_sc = dict(zip(ranked.tolist(), scores.tolist()))
    _assert_close_dicts(got_sc, {c: s for c, (s, _) in ref_sc.items()}, "scores")
    assert _numba_n_high(cons) == [ref_sc[c][1] for c in cand.tolist()]
    # the numba order is exactly the documented order of its own scores and the reference |H_c|
    assert ranked.tolist() == R.ref_ranking(
        {c: (got_sc[c], ref_sc[c][1]) for c in cand.tolist()})

    # step 3: cover, both fed the numba ranking
    sel = A.cover_foreground(prep, ranked)
    assert sel.tolist() == R.ref_cover(patches, cls, ranked.tolist(), params)

    # steps 4-5: graph, both fed the numba selection
    edges, weights = A.patch_graph(prep, sel, cons)
    edges = np.asarray(edges)
    if len(edges):
        assert np.all(edges[:, 0] < edges[:, 1])
    got_edges = _edges_dict(edges, weights)
    assert len(got_edges) == len(edges)
    ref_edges = R.ref_graph(patches, cls, ref_cons, sel.tolist(), params)
    _assert_close_dicts(got_edges, ref_edges, "edge weights")

    # step 6: partition, both fed the numba graph
    for method in ("cc", "mws"):
        comp_m = A.partition_graph(len(sel), edges, weights, method)
        assert np.asarray(comp_m).tolist() == R.ref_partition(len(sel), got_edges, method).tolist()
    comp = A.partition_graph(len(sel), edges, weights, params.partition)

    # step 7: labelling, both fed the numba selection and components
    out = A.label_instances(prep, sel, comp)
    ref_out = R.ref_label(patches, cls, sel.tolist(), comp, params)
    assert out.shape == ref_out.shape
    if params.overlapping:
        assert out.dtype == bool
    else:
        assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref_out)

    # the whole pipeline is the chain of steps
    full = A.assemble(numinst, patches, params)
    np.testing.assert_array_equal(full, out)

    # nothing was written into the inputs
    np.testing.assert_array_equal(patches, patches_before)
    if numinst is not None:
        np.testing.assert_array_equal(numinst, numinst_before)


GT_CASES = [n for n in CASES if n.startswith(("gt", "overlap_gt", "fast_gt", "lowth_gt"))]


@pytest.mark.parametrize("name", GT_CASES)
def test_gt_end_to_end_matches_reference(name):
    """On exact GT inputs the whole reference pipeline gives the same result."""
    numinst, patches, params = _run_case(name)
    out = A.assemble(numinst, patches, params)
    np.testing.assert_array_equal(out, R.ref_assemble(numinst, patches, params))
    if not params.overlapping and params.min_size == 0 and not params.fast:
        # ideal outputs: every foreground pixel is labelled
        assert np.array_equal(out > 0, R.ref_classes(numinst, patches, params) > 0)


def test_inputs_not_mutated_other_dtypes():
    """float64 and non-contiguous inputs are copied, never written."""
    numinst, patches = _noisy(*_gt2d(), seed=11)
    p64 = patches.astype(np.float64)
    n64 = numinst.astype(np.float64)
    p_nc = np.asfortranarray(patches)
    before = (p64.copy(), n64.copy(), p_nc.copy())
    params = AssemblyParams(patchshape=(5, 5), numinst_thresholds=NOISY_T)
    a = A.assemble(n64, p64, params)
    b = A.assemble(numinst, p_nc, params)
    np.testing.assert_array_equal(a, b)
    for x, y in zip((p64, n64, p_nc), before):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- hand-made cases
def _hand_case():
    """A 1x5 image with 1x3 patches, every pixel class 1.

    Patch values ``P_c(u)`` (u = c-1, c, c+1; '*' outside the image, set to 1 to check that
    they are ignored):
        c=0: *, 1.0, 0.95      c=1: 0.95, 1.0, 0.05    c=2: 0.5, 1.0, 1.0
        c=3: 1.0, 1.0, 0.0     c=4: 0.2, 1.0, *
    """
    vals = {0: (1.0, 1.0, 0.95), 1: (0.95, 1.0, 0.05), 2: (0.5, 1.0, 1.0),
            3: (1.0, 1.0, 0.0), 4: (0.2, 1.0, 1.0)}
    patches = np.zeros((3, 1, 5), np.float32)
    for c, v in vals.items():
        patches[:, 0, c] = v
    numinst = np.zeros((3, 1, 5), np.float32)
    numinst[1] = 1.0
    return numinst, patches


def test_hand_computed_consensus_and_steps():
    numinst, patches = _hand_case()
    params = AssemblyParams(patchshape=(1, 3), patch_threshold=0.9, fc_threshold=0.5)
    d = 1 - 0.81
    # votes (TH = 0.9, BG = 0.1):
    #   c=0: H={0,1}           (0,1): (0.95 - .81)/d
    #   c=1: H={0,1}, L={2}    (0,1): (0.95 - .81)/d, (0,2): -(.95*.95 - .81)/d,
    #                          (1,2): -(.95 - .81)/d
    #   c=2: H={2,3} (P=0.5 at 1 is neither)    (2,3): 1
    #   c=3: H={2,3}, L={4}    (2,3): 1, (2,4): -1, (3,4): -1
    #   c=4: H={4} (P=0.2 at 3 is neither)      no vote
    a = (0.95 - 0.81) / d
    b = -(0.95 * 0.95 - 0.81) / d
    want = {(0, 1): a, (0, 2): b, (1, 2): -a, (2, 3): 1.0, (2, 4): -1.0, (3, 4): -1.0}
    cls = A.foreground_classes(numinst, patches, params)
    assert cls.tolist() == [[1, 1, 1, 1, 1]]
    cand = np.flatnonzero(A.candidate_mask(cls, params))
    prep = A.Prepared(patches, cls, params)
    cons = A.compute_consensus(prep, cand)
    _assert_close_dicts(cons.to_dict(), want, "hand consensus")
    _assert_close_dicts(R.ref_consensus(patches, cls, cand.tolist(), params), want,
                        "hand consensus (reference)")
    assert abs(cons.value((0, 2), (0, 0)) - b) <= TOL
    assert np.isnan(cons.value((0, 0), (0, 3)))

    # scores: c=0: a; c=1: mean(a, -b, a); c=2: 1; c=3: mean(1, 1, 1); c=4: -1
    want_scores = {0: a, 1: (2 * a - b) / 3, 2: 1.0, 3: 1.0, 4: -1.0}
    ranked, scores = A.rank_patches(cand, cons)
    _assert_close_dicts(dict(zip(ranked.tolist(), scores.tolist())), want_scores, "hand scores")
    assert set(ranked[:2].tolist()) == {2, 3}  # tie (score 1, |H| = 2): broken by the hash
    assert ranked[2:].tolist() == [0, 1, 4]
    key = A._tie_key(np.array([2, 3]))
    assert ranked[0] == (2 if key[0] < key[1] else 3)

    # cover (fc 0.5): best of {2, 3} covers {2, 3}; 0 covers {0, 1}; 1 adds nothing; 4 adds {4}
    sel = A.cover_foreground(prep, ranked)
    assert sel.tolist() == [int(ranked[0]), 0, 4]

    # graph: w(s, 0) = mean(C(2,0), C(2,1)) (C(3,0), C(3,1) undefined); w(s, 4) = mean(-1, -1);
    # 0 and 4 share no defined C, so no edge
    edges, weights = A.patch_graph(prep, sel, cons)
    _assert_close_dicts(_edges_dict(edges, weights), {(0, 1): (b - a) / 2, (0, 2): -1.0},
                        "hand edges")
    for method in ("cc", "mws"):
        comp = A.partition_graph(3, edges, weights, method)
        assert np.asarray(comp).tolist() == [1, 2, 3]
        out = A.label_instances(prep, sel, comp)
        assert out.tolist() == [[2, 2, 1, 1, 3]]
        assert A.assemble(numinst, patches, params.replace(partition=method)).tolist() == \
            [[2, 2, 1, 1, 3]]


@pytest.mark.parametrize("th", [0.4, 0.5, 0.7, 0.9])
def test_ideal_ties_ranked_by_size(th):
    """One 3x3 instance, 3x3 patches, ideal outputs: every vote is exactly +1, so every
    patch scores 1 and the ranking must follow |H_c| (centre 9, edges 6, corners 4), even
    where float32 rounding makes the computed scores differ in the last bits."""
    numinst, patches = instance_targets(np.ones((3, 3), np.int32), (3, 3))
    params = AssemblyParams(patchshape=(3, 3), patch_threshold=th)
    cls = A.foreground_classes(numinst, patches, params)
    cand = np.flatnonzero(A.candidate_mask(cls, params))
    prep = A.Prepared(patches, cls, params)
    cons = A.compute_consensus(prep, cand)
    ranked, _ = A.rank_patches(cand, cons)
    ref_cons = R.ref_consensus(patches, cls, cand.tolist(), params)
    assert set(ref_cons.values()) == {1.0}
    want = R.ref_ranking(R.ref_scores(patches, cls, cand.tolist(), ref_cons, params))
    assert want[0] == 4 and sorted(want[1:5]) == [1, 3, 5, 7]
    assert ranked.tolist() == want


def test_overlapping_empty_component_is_dropped():
    """A component whose patches paint nothing (no value above TH) yields no mask."""
    numinst, patches = _hand_case()
    patches[1, 0, 4] = 0.5  # patch at 4 now paints nothing
    sel, comp = [3, 0, 4], np.array([1, 2, 3])
    for overlapping in (False, True):
        params = AssemblyParams(patchshape=(1, 3), overlapping=overlapping)
        cls = A.foreground_classes(numinst, patches, params)
        prep = A.Prepared(patches, cls, params)
        out = A.label_instances(prep, np.array(sel), comp)
        np.testing.assert_array_equal(out, R.ref_label(patches, cls, sel, comp, params))
        assert (len(out) if overlapping else out.max()) == 2


def test_mws_zero_weight_edges_do_nothing():
    edges = np.array([[0, 1], [0, 2], [1, 2]], np.int64)
    weights = np.array([0.9, 0.0, -0.0])
    for method, want in (("cc", [1, 1, 2]), ("mws", [1, 1, 2])):
        assert np.asarray(A.partition_graph(3, edges, weights, method)).tolist() == want
        assert R.ref_partition(3, _edges_dict(edges, weights), method).tolist() == want


def test_mws_negative_edge_separates_what_cc_merges():
    # two clusters {0, 1} and {2, 3} held together by a weak positive edge (1, 2) and kept
    # apart by a strong repulsive edge (0, 3); node 4 is isolated
    edges = np.array([[0, 1], [0, 3], [1, 2], [2, 3]], np.int64)
    weights = np.array([0.9, -0.95, 0.5, 0.8])
    cc = A.partition_graph(5, edges, weights, "cc")
    mws = A.partition_graph(5, edges, weights, "mws")
    assert np.asarray(cc).tolist() == [1, 1, 1, 1, 2]
    assert np.asarray(mws).tolist() == [1, 1, 2, 2, 3]
    ed = _edges_dict(edges, weights)
    assert R.ref_partition(5, ed, "cc").tolist() == [1, 1, 1, 1, 2]
    assert R.ref_partition(5, ed, "mws").tolist() == [1, 1, 2, 2, 3]


def test_mws_ties_by_node_pair():
    # |w| all equal: processed (0,1) mutex, then (0,2) merge, then (1,2) blocked by the mutex
    edges = np.array([[0, 1], [0, 2], [1, 2]], np.int64)
    weights = np.array([-0.5, 0.5, 0.5])
    assert np.asarray(A.partition_graph(3, edges, weights, "mws")).tolist() == [1, 2, 1]
    assert R.ref_partition(3, _edges_dict(edges, weights), "mws").tolist() == [1, 2, 1]


@pytest.mark.parametrize("seed", range(6))
def test_partition_random_graphs(seed):
    """Random signed graphs (with repeated |weights|) partition identically."""
    rng = np.random.default_rng(100 + seed)
    n = 12
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if rng.random() < 0.3]
    edges = np.array(pairs, np.int64).reshape(-1, 2)
    weights = rng.choice([-0.9, -0.5, -0.2, 0.2, 0.5, 0.9], size=len(pairs))
    weights = weights + rng.choice([0.0, 0.01], size=len(pairs))
    ed = _edges_dict(edges, weights)
    for method in ("cc", "mws"):
        got = np.asarray(A.partition_graph(n, edges, weights, method)).tolist()
        assert got == R.ref_partition(n, ed, method).tolist(), method


@pytest.mark.parametrize("seed", range(3))
def test_mws_large_random_graphs(seed):
    """Graphs of a few hundred nodes, with clusters that grow long constraint lists, give
    the reference's partition (the kernel keeps constraints as lists of far nodes)."""
    rng = np.random.default_rng(200 + seed)
    n = 300
    a = rng.integers(0, n, size=3000)
    b = (a + rng.integers(1, 25, size=a.size)) % n
    pairs = sorted({(int(min(u, v)), int(max(u, v))) for u, v in zip(a, b)})
    edges = np.array(pairs, np.int64)
    weights = rng.choice([-0.8, -0.3, 0.0, 0.3, 0.6, 0.9], size=len(pairs),
                         p=[0.2, 0.15, 0.05, 0.2, 0.2, 0.2])
    got = np.asarray(A.partition_graph(n, edges, weights, "mws")).tolist()
    assert got == R.ref_partition(n, _edges_dict(edges, weights), "mws").tolist()
    assert 1 < max(got) < n
