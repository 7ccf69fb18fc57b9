"""synth_fluorescence_nuclei: labels agree with what was drawn, noise level, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ppp_zoo.data import NucleiInfo, synth_fluorescence_nuclei, synth_fluorescence_nuclei_dataset


def _inner(info: NucleiInfo, shape, d_max: float) -> np.ndarray:
    """Nuclei whose drawn shape cannot reach the border (semi-axis <= 0.61 d, outline
    harmonics add at most a few tenths)."""
    margin = 0.8 * d_max
    c = info.centres
    return np.all((c >= margin) & (c <= np.array(shape) - 1 - margin), axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_the_drawn_nuclei(seed):
    shape, d_range = (192, 192), (12.0, 30.0)
    image, labels, info = synth_fluorescence_nuclei(shape, seed, diameter=d_range,
                                                    return_info=True)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert labels.dtype == np.int32
    n = int(labels.max())
    assert n > 5
    # consecutive labels 1..N, one per drawn nucleus
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    assert len(info.centres) == len(info.diameters) == len(info.brightness) == n
    assert info.centres.shape == (n, 2)
    np.testing.assert_array_equal(np.bincount(labels.ravel())[1:], info.areas)
    assert info.coverage == pytest.approx((labels > 0).mean())
    # every label is one connected region
    for i, window in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[window] == i)[1] == 1, f"label {i} is split"
    # centroids sit on the drawn centres, diameters lie in the asked range
    centroids = np.array(ndimage.center_of_mass(labels > 0, labels, np.arange(1, n + 1)))
    inner = _inner(info, shape, d_range[1])
    assert inner.sum() >= 3
    offset = np.linalg.norm(centroids - info.centres, axis=1)
    assert np.all(offset[inner] < 0.6 * info.diameters[inner])
    assert np.all(info.diameters[inner] >= 0.9 * d_range[0])
    assert np.all(info.diameters[inner] <= 1.1 * d_range[1])
    assert d_range[0] <= info.diameter <= d_range[1]
    # a label holds at most the pixels of its drawn shape (others can take some)
    drawn_area = np.pi * info.diameters ** 2 / 4
    assert np.all(info.areas[inner] <= 1.05 * drawn_area[inner] + 2)


@pytest.mark.parametrize("snr", [2.0, 8.0, 30.0])
def test_measured_snr_matches_the_asked_one(snr):
    for seed in (0, 1):
        _, _, info = synth_fluorescence_nuclei((128, 128), seed, snr=snr, return_info=True)
        assert info.snr == pytest.approx(snr)
        assert info.measured_snr == pytest.approx(snr, rel=0.1)


def _contrast(image, labels, distance):
    far = ndimage.distance_transform_edt(labels == 0) > distance
    assert far.sum() > 500
    return (image[labels > 0].mean() - image[labels == 0].mean()) / image[far].std()


@pytest.mark.parametrize("seed", [0, 3])
def test_image_contrast_grows_with_snr(seed):
    kwargs = dict(diameter=16.0, coverage=0.2, return_info=True)
    image_lo, labels_lo, info_lo = synth_fluorescence_nuclei((128, 128), seed, snr=2, **kwargs)
    image_hi, labels_hi, info_hi = synth_fluorescence_nuclei((128, 128), seed, snr=30, **kwargs)
    # a fixed snr draws nothing: the same nuclei, only the noise differs
    np.testing.assert_array_equal(labels_lo, labels_hi)
    c_lo = _contrast(image_lo, labels_lo, info_lo.diameter)
    c_hi = _contrast(image_hi, labels_hi, info_hi.diameter)
    assert c_lo > 1.0  # nuclei visible even at snr 2
    assert c_hi > 2 * c_lo


def test_same_seed_same_image_other_seed_other_image():
    a = synth_fluorescence_nuclei((96, 96), 5)
    b = synth_fluorescence_nuclei((96, 96), 5)
    c = synth_fluorescence_nuclei((96, 96), 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])
    # return_info does not change the images
    d = synth_fluorescence_nuclei((96, 96), 5, return_info=True)
    np.testing.assert_array_equal(a[0], d[0])
    np.testing.assert_array_equal(a[1], d[1])


@pytest.mark.parametrize("diameter", [10.0, 20.0, 40.0])
def test_fixed_diameter(diameter):
    _, labels, info = synth_fluorescence_nuclei((192, 192), 1, diameter=diameter,
                                                return_info=True)
    assert info.diameter == pytest.approx(diameter)
    assert np.median(info.diameters) == pytest.approx(diameter, rel=0.25)
    # the labels themselves (clipped by neighbours and the border) are of that size too
    areas = np.bincount(labels.ravel())[1:]
    assert 2 * np.sqrt(np.median(areas) / np.pi) == pytest.approx(diameter, rel=0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_coverage(seed):
    _, labels, info = synth_fluorescence_nuclei((256, 256), seed, coverage=0.3,
                                                return_info=True)
    assert info.coverage == pytest.approx(0.3, abs=0.1)
    assert (labels > 0).mean() == pytest.approx(info.coverage)


@pytest.mark.parametrize("kwargs", [
    dict(shape=(32, 32, 32)),
    dict(shape=(4, 64)),
    dict(snr=-1.0),
    dict(snr=(10.0, 2.0)),
    dict(coverage=0.8),
    dict(coverage=(0.1, 0.9)),
    dict(cluster_fraction=1.5),
    dict(diameter=1.0),
    dict(irregularity=-0.1),
])
def test_bad_arguments(kwargs):
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (64, 64))
    with pytest.raises(ValueError):
        synth_fluorescence_nuclei(shape, 0, **kwargs)


def test_dataset_images_are_independent_and_stable_in_n_images():
    two = synth_fluorescence_nuclei_dataset(2, seed=4, shape=(96, 96))
    three = synth_fluorescence_nuclei_dataset(3, seed=4, shape=(96, 96))
    assert len(two) == 2 and len(three) == 3
    for (im_a, lab_a), (im_b, lab_b) in zip(two, three):
        np.testing.assert_array_equal(im_a, im_b)
        np.testing.assert_array_equal(lab_a, lab_b)
    images = [im for im, _ in three]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.array_equal(images[i], images[j])
    # image i is the generator on the i-th child seed
    child = np.random.SeedSequence(4).spawn(3)[2]
    im, lab = synth_fluorescence_nuclei((96, 96), child)
    np.testing.assert_array_equal(im, three[2][0])
    np.testing.assert_array_equal(lab, three[2][1])
    # keyword arguments reach the generator
    with_info = synth_fluorescence_nuclei_dataset(1, seed=4, shape=(96, 96), snr=8.0,
                                                  return_info=True)
    assert isinstance(with_info[0][2], NucleiInfo) and with_info[0][2].snr == pytest.approx(8.0)
    assert synth_fluorescence_nuclei_dataset(0, seed=4) == []
