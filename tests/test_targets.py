"""GT targets: layout, the same-instance rule, overlaps, 3D, validation."""

from __future__ import annotations

import numpy as np
import pytest

from ppp_zoo.data.targets import instance_targets


def _reference_patch(labels, centre, patchshape):
    """Slow reference: the GT patch at one pixel, from the definition."""
    r = np.array(patchshape) // 2
    out = np.zeros(patchshape, np.float32)
    for idx in np.ndindex(*patchshape):
        u = tuple(np.array(centre) + np.array(idx) - r)
        inside = all(0 <= q < s for q, s in zip(u, labels.shape))
        if inside and labels[centre] > 0 and labels[u] == labels[centre]:
            out[idx] = 1
    return out.reshape(-1)


@pytest.mark.parametrize("shape,patchshape", [((20, 17), (5, 7)), ((9, 11, 10), (3, 5, 3))])
def test_patches_match_definition(rng, shape, patchshape):
    labels = rng.integers(0, 4, size=shape)
    numinst, patches = instance_targets(labels, patchshape)
    assert patches.shape == (int(np.prod(patchshape)),) + shape
    assert numinst.shape == (3,) + shape
    for centre in [tuple(rng.integers(0, s) for s in shape) for _ in range(30)]:
        np.testing.assert_array_equal(patches[(slice(None),) + centre],
                                      _reference_patch(labels, centre, patchshape))
    # the patch centre is the foreground mask; numinst is one-hot
    np.testing.assert_array_equal(patches[patches.shape[0] // 2], labels > 0)
    np.testing.assert_array_equal(numinst.sum(axis=0), 1)


def test_overlapping_masks_share_an_instance():
    masks = np.zeros((2, 7, 7), bool)
    masks[0, 3, :] = True  # horizontal bar
    masks[1, :, 3] = True  # vertical bar, crossing at (3, 3)
    numinst, patches = instance_targets(masks, (3, 3), overlapping=True)
    assert numinst[2, 3, 3] == 1 and numinst[2].sum() == 1
    assert numinst[1].sum() == 12
    p = patches[:, 3, 3].reshape(3, 3)  # the crossing belongs to both bars
    np.testing.assert_array_equal(p, [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    p = patches[:, 3, 2].reshape(3, 3)  # on the horizontal bar, left of the crossing
    np.testing.assert_array_equal(p, [[0, 0, 0], [1, 1, 1], [0, 0, 0]])


def test_many_overlapping_masks_beyond_one_word(rng):
    masks = rng.random((70, 12, 12)) > 0.97
    masks[65, 5, 5] = masks[65, 5, 6] = True
    _, patches = instance_targets(masks, (3, 3), overlapping=True)
    assert patches[5, 5, 5] == 1  # right neighbour shares mask 65


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((4, 4), float), "integer or boolean"),
    (np.zeros((4, 4, 4), int), "2D patchshape"),
    (-np.ones((4, 4), int), "non-negative"),
])
def test_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        instance_targets(bad, (3, 3))


def test_even_patchshape_rejected():
    with pytest.raises(ValueError, match="odd"):
        instance_targets(np.zeros((5, 5), int), (4, 3))
