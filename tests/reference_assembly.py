"""A plain, slow reference implementation of the PatchPerPix instance assembly.

Every step follows the definitions in the docstring of :mod:`ppp_zoo.postprocess` as
literally as possible: Python loops and dicts over pixel coordinates, float64 arithmetic,
no vectorisation tricks. It is meant for tiny inputs only (e.g. 16x16 images with 5x5
patches, or 8x8x8 volumes with 3x3x3 patches) and serves as an independent check of the
fast implementation in :mod:`ppp_zoo.postprocess.assembly`.

Conventions
-----------
* Pixels are identified by their flat raster (C order) index; ``_coords`` / ``_flat``
  convert between flat indices and coordinate tuples.
* ``P_c(u)`` is ``patches[k][c]`` with ``o_k = u - c`` (see :func:`_patch_value`).
* Consensus values are stored in a dict keyed by ``(u, v)`` flat indices with ``u < v``.
"""

from __future__ import annotations

import itertools

import numpy as np

from ppp_zoo.postprocess.assembly import _tie_key


# --------------------------------------------------------------------------- geometry
def _flat(u, shape) -> int:
    """Flat raster index of coordinate tuple ``u``."""
    idx = 0
    for ui, n in zip(u, shape):
        idx = idx * n + ui
    return idx


def _coords(flat: int, shape) -> tuple[int, ...]:
    """Coordinate tuple of flat raster index ``flat``."""
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))


def _inside(u, shape) -> bool:
    return all(0 <= ui < n for ui, n in zip(u, shape))


def _radius(params) -> tuple[int, ...]:
    return tuple(s // 2 for s in params.patchshape)


def _box(c, shape, params):
    """Yield ``(k, u)`` for every pixel ``u = c + o_k`` of box(c) that lies in the image."""
    r = _radius(params)
    for k, idx in enumerate(itertools.product(*[range(s) for s in params.patchshape])):
        u = tuple(ci + i - ri for ci, i, ri in zip(c, idx, r))
        if _inside(u, shape):
            yield k, u


def _thresholds(params) -> tuple[float, float]:
    th = float(params.patch_threshold)
    bg = 1.0 - th if th >= 0.5 else th
    return th, bg


def _spatial(patches) -> tuple[int, ...]:
    return tuple(int(n) for n in patches.shape[1:])


def _patch_value(patches, k, c) -> float:
    """``P_c(c + o_k)`` as a Python float (float64)."""
    return float(patches[(k,) + tuple(c)])


def _high_low(patches, cls, c_flat, params):
    """``H_c`` and ``L_c`` of the patch centred at flat index ``c_flat`` (fast mode: the
    pixels on the stride grid only).

    Returns two dicts ``{u_flat: P_c(u)}`` (raster order of the box).
    """
    shape = _spatial(patches)
    th, bg = _thresholds(params)
    c = _coords(c_flat, shape)
    high, low = {}, {}
    for k, u in _box(c, shape, params):
        if int(cls[u]) != 1 or not _on_grid(u, params):
            continue
        p = _patch_value(patches, k, c)
        if p > th:
            high[_flat(u, shape)] = p
        if p < bg:
            low[_flat(u, shape)] = p
    return high, low


def _grid(params) -> int:
    """Fast mode's grid: fast_stride, at most the patch radius on every axis of more than
    one pixel (1 in exact mode)."""
    if not params.fast:
        return 1
    return max(1, min([params.fast_stride] + [s // 2 for s in params.patchshape if s > 1]))


def _on_grid(u: tuple, params) -> bool:
    """Whether pixel ``u`` counts in fast mode's H and L sets (always in exact mode)."""
    return all(q % _grid(params) == 0 for q in u)


def _key(u: int, v: int) -> tuple[int, int]:
    return (u, v) if u < v else (v, u)


# --------------------------------------------------------------------------- step 0
def ref_classes(numinst, patches, params) -> np.ndarray:
    """Per-pixel class 0 / 1 / 2 (int8, image shape)."""
    shape = _spatial(patches)
    cls = np.zeros(shape, np.int8)
    th, _ = _thresholds(params)
    if numinst is None:
        centre = len(list(itertools.product(*[range(s) for s in params.patchshape]))) // 2
        for x in itertools.product(*[range(n) for n in shape]):
            if _patch_value(patches, centre, x) > th:
                cls[x] = 1
        return cls
    t1, t2 = (float(t) for t in params.numinst_thresholds)
    for x in itertools.product(*[range(n) for n in shape]):
        if float(numinst[(2,) + x]) > t2:
            cls[x] = 2
        elif float(numinst[(1,) + x]) > t1:
            cls[x] = 1
        else:
            cls[x] = 0
    return cls


def ref_candidates(cls, params) -> list[int]:
    """Flat indices of the candidate centres, ascending."""
    shape = tuple(cls.shape)
    out = []
    for x in itertools.product(*[range(n) for n in shape]):
        if int(cls[x]) != 1:
            continue
        if not all(xi % _grid(params) == 0 for xi in x):
            continue
        out.append(_flat(x, shape))
    return out


# --------------------------------------------------------------------------- step 1
def ref_consensus(patches, cls, cands, params) -> dict[tuple[int, int], float]:
    """``{(u, v): C(u, v)}`` for every pair (u < v) that received at least one vote."""
    th, _ = _thresholds(params)
    denom = 1.0 - th * th
    sums: dict[tuple[int, int], float] = {}
    counts: dict[tuple[int, int], int] = {}

    def vote(u, v, value):
        key = _key(u, v)
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1

    for c in cands:
        high, low = _high_low(patches, cls, c, params)
        hi = list(high.items())
        for i in range(len(hi)):
            for j in range(i + 1, len(hi)):
                (u, pu), (v, pv) = hi[i], hi[j]
                vote(u, v, (pu * pv - th * th) / denom)
        for u, pu in hi:
            for v, pv in low.items():
                if u == v:
                    continue
                vote(u, v, -(pu * (1.0 - pv) - th * th) / denom)
    return {key: sums[key] / counts[key] for key in sums}


# --------------------------------------------------------------------------- step 2
def ref_scores(patches, cls, cands, cons, params) -> dict[int, tuple[float, int]]:
    """``{c: (score, |H_c|)}`` for every candidate centre."""
    out = {}
    for c in cands:
        high, low = _high_low(patches, cls, c, params)
        hi = list(high)
        terms = []
        for i in range(len(hi)):
            for j in range(i + 1, len(hi)):
                key = _key(hi[i], hi[j])
                if key in cons:
                    terms.append(cons[key])
        for u in hi:
            for v in low:
                if u == v:
                    continue
                key = _key(u, v)
                if key in cons:
                    terms.append(-cons[key])
        score = sum(terms) / len(terms) if terms else -1.0
        out[c] = (score, len(hi))
    return out


def ref_ranking(scores: dict[int, tuple[float, int]]) -> list[int]:
    """Candidates best first: score (rounded to 5 decimals) desc, |H_c| desc, tie key asc,
    flat index asc."""

    def sort_key(c):
        score, n_high = scores[c]
        score = round(float(score), 5)
        tie = int(_tie_key(np.array([c], np.int64))[0])
        return (-score, -n_high, tie, c)

    return sorted(scores, key=sort_key)


# --------------------------------------------------------------------------- step 3
def ref_cover(patches, cls, ranked, params) -> list[int]:
    """Greedy foreground cover: the selected centres in selection order.

    Fast mode: first the cover of the foreground pixels on the stride grid; then, with the
    regions of those patches covered, the remaining candidates in rank order select
    themselves for the pixels still uncovered; the selection is in rank order."""
    shape = _spatial(patches)
    fc = float(params.fc_threshold)

    def region(c_flat, grid_only):
        c = _coords(int(c_flat), shape)
        return {_flat(u, shape) for k, u in _box(c, shape, params)
                if int(cls[u]) >= 1 and _patch_value(patches, k, c) > fc
                and (not grid_only or _on_grid(u, params))}

    def greedy(order, covered, grid_only):
        chosen = []
        for c_flat in order:
            reg = region(c_flat, grid_only)
            if reg - covered:
                chosen.append(int(c_flat))
                covered |= reg
        return chosen

    if _grid(params) == 1:
        return greedy(ranked, set(), False)
    first = greedy(ranked, set(), True)
    covered = set().union(*(region(c, False) for c in first))
    chosen = set(first) | set(greedy([c for c in ranked if c not in set(first)], covered, False))
    return [int(c) for c in ranked if c in chosen]


# --------------------------------------------------------------------------- steps 4-5
def ref_graph(patches, cls, cons, selected, params) -> dict[tuple[int, int], float]:
    """``{(a, b): weight}`` over node indices a < b into ``selected``."""
    shape = _spatial(patches)
    highs = [list(_high_low(patches, cls, int(c), params)[0]) for c in selected]
    centres = [_coords(int(c), shape) for c in selected]
    edges = {}
    for a in range(len(selected)):
        for b in range(a + 1, len(selected)):
            close = all(abs(ca - cb) <= 4 * (s // 2)
                        for ca, cb, s in zip(centres[a], centres[b], params.patchshape))
            if not close:
                continue
            total, count = 0.0, 0
            for u in highs[a]:
                for v in highs[b]:
                    if u == v:
                        continue
                    key = _key(u, v)
                    if key in cons:
                        total += cons[key]
                        count += 1
            if count:
                edges[(a, b)] = total / count
    return edges


# --------------------------------------------------------------------------- step 6
def _number_by_first_node(cluster_of: list) -> np.ndarray:
    """Map arbitrary cluster labels to 1..K in order of their first node."""
    ids: dict = {}
    out = np.zeros(len(cluster_of), np.int64)
    for i, cl in enumerate(cluster_of):
        if cl not in ids:
            ids[cl] = len(ids) + 1
        out[i] = ids[cl]
    return out


def ref_partition(n: int, edges: dict[tuple[int, int], float], method: str) -> np.ndarray:
    """Component id (1..K, numbered by first node) of every node."""
    cluster_of = list(range(n))  # node -> cluster label (a node index)

    def merge(x, y):  # relabel cluster y as x
        for i in range(n):
            if cluster_of[i] == y:
                cluster_of[i] = x

    if method == "cc":
        for (a, b), w in edges.items():
            if w > 0 and cluster_of[a] != cluster_of[b]:
                merge(cluster_of[a], cluster_of[b])
        return _number_by_first_node(cluster_of)
    if method != "mws":
        raise ValueError(method)
    mutex: set[frozenset] = set()
    order = sorted(edges.items(), key=lambda item: (-abs(item[1]), item[0][0], item[0][1]))
    for (a, b), w in order:
        x, y = cluster_of[a], cluster_of[b]
        if x == y:
            continue
        if w > 0:
            if frozenset((x, y)) in mutex:
                continue
            merge(x, y)
            # every mutex of cluster y now belongs to cluster x
            mutex = {frozenset(x if z == y else z for z in pair) for pair in mutex}
        elif w < 0:
            mutex.add(frozenset((x, y)))
    return _number_by_first_node(cluster_of)


# --------------------------------------------------------------------------- step 7
def _paint_region(patches, cls, c_flat, params) -> list[tuple[int, ...]]:
    shape = _spatial(patches)
    th, _ = _thresholds(params)
    c = _coords(int(c_flat), shape)
    region = []
    for k, u in _box(c, shape, params):
        if params.crop_to_fg and int(cls[u]) < 1:
            continue
        if _patch_value(patches, k, c) > th:
            region.append(u)
    return region


def ref_label(patches, cls, selected, comp, params) -> np.ndarray:
    """Label image (int32), or (N, ...) bool masks in overlapping mode."""
    shape = _spatial(patches)
    comp = [int(x) for x in comp]
    if params.overlapping:
        n_comp = max(comp, default=0)
        masks = [np.zeros(shape, bool) for _ in range(n_comp)]
        for c, cid in zip(selected, comp):
            for u in _paint_region(patches, cls, c, params):
                masks[cid - 1][u] = True
        # a component that paints no pixel is no instance (in a label image its id would
        # simply not appear), so empty masks are dropped even with min_size = 0
        kept = [m for m in masks if int(m.sum()) > 0 and int(m.sum()) >= params.min_size]
        return np.array(kept, bool).reshape((len(kept),) + shape)
    labels = np.zeros(shape, np.int64)
    for i in reversed(range(len(selected))):  # worst-ranked first, better patches win
        for u in _paint_region(patches, cls, selected[i], params):
            labels[u] = comp[i]
    sizes: dict[int, int] = {}
    for x in itertools.product(*[range(n) for n in shape]):
        lab = int(labels[x])
        if lab:
            sizes[lab] = sizes.get(lab, 0) + 1
    kept = sorted(lab for lab, size in sizes.items() if size >= params.min_size)
    new_id = {lab: i + 1 for i, lab in enumerate(kept)}
    out = np.zeros(shape, np.int32)
    for x in itertools.product(*[range(n) for n in shape]):
        out[x] = new_id.get(int(labels[x]), 0)
    return out


# --------------------------------------------------------------------------- pipeline
def ref_assemble(numinst, patches, params):
    """The whole pipeline with the reference steps (all in float64)."""
    cls = ref_classes(numinst, patches, params)
    cands = ref_candidates(cls, params)
    cons = ref_consensus(patches, cls, cands, params)
    scores = ref_scores(patches, cls, cands, cons, params)
    ranked = ref_ranking(scores)
    selected = ref_cover(patches, cls, ranked, params)
    edges = ref_graph(patches, cls, cons, selected, params)
    comp = ref_partition(len(selected), edges, params.partition)
    return ref_label(patches, cls, selected, comp, params)
