"""Zoom, gamma, blur and noise augmentation of CropSampler; synthetic extra training images."""

from __future__ import annotations

import numpy as np
import pytest

from ppp_zoo.config import config_from_dict, load_preset, merge_config_dicts
from ppp_zoo.train import CropSampler, load_training_data

TINY = {
    "data": {"source": "synth-nuclei", "n_images": 3, "image_size": [64, 64],
             "val_fraction": 0.34, "seed": 1, "synth": {"n_nuclei": 8}},
    "model": {"patchshape": [7, 7], "base_features": 4, "depth": 2},
    "train": {"crop_size": [32, 32], "seed": 0},
}

RADIUS = 5


def _cfg(**train) -> object:
    return config_from_dict(merge_config_dicts(TINY, {"train": train}))


def _disks(size: int = 192, spacing: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Constant-intensity disks of radius RADIUS on a grid: image 1 inside, 0 outside."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    label = 0
    for cy in range(spacing // 2, size, spacing):
        for cx in range(spacing // 2, size, spacing):
            label += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS ** 2] = label
    return (labels > 0).astype(np.float32), labels


def _inner_sizes(labels: np.ndarray) -> np.ndarray:
    """Pixel counts of the objects that do not touch the crop border."""
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return counts[~np.isin(ids, border)]


# --------------------------------------------------------------------------- zoom
def test_zoom_varies_object_size_and_keeps_image_and_labels_aligned():
    image, labels = _disks()
    unzoomed = int((labels == 1).sum())
    cfg = _cfg(zoom=2.0, crop_size=[64, 64])
    sampler = CropSampler([(image, labels)], cfg, np.random.default_rng(0))
    assert sampler.warp
    ratios = []
    for _ in range(24):
        img, tgt = sampler._augment(*sampler._crop_with_foreground())
        assert img.shape == tgt.shape == (64, 64)
        assert img.dtype == np.float32 and np.isfinite(img).all()
        fg = tgt > 0
        assert fg.any() and not fg.all()
        # bright exactly where the labels are (intensity scale/shift keep 0.5 between them)
        assert img[fg].mean() > 0.75 and img[~fg].mean() < 0.25
        assert ((img > 0.5) != fg).mean() < 0.1
        assert np.corrcoef(img.ravel(), fg.ravel())[0, 1] > 0.8
        sizes = _inner_sizes(tgt)
        if len(sizes):
            ratios.append(np.median(sizes) / unzoomed)
    ratios = np.array(ratios)
    assert len(ratios) >= 20
    # some crops shrunk, some enlarged, some (about half) left as they were
    assert (ratios < 0.8).any() and (ratios > 1.25).any()
    assert (np.abs(ratios - 1) < 0.05).sum() >= 4
    # zoom is log-uniform in [1/2, 2]: areas within [1/4, 4] (plus rasterisation)
    assert ratios.min() > 0.2 and ratios.max() < 4.5


def test_without_zoom_objects_keep_their_size():
    image, labels = _disks()
    unzoomed = int((labels == 1).sum())
    sampler = CropSampler([(image, labels)], _cfg(crop_size=[64, 64]),
                          np.random.default_rng(0))
    assert not sampler.warp
    for _ in range(8):
        _, tgt = sampler._augment(*sampler._crop_with_foreground())
        assert np.all(_inner_sizes(tgt) == unzoomed)


# --------------------------------------------------------------------------- off = unchanged
def _samples(sampler: CropSampler, n: int = 6):
    return [sampler.sample() for _ in range(n)]


def _assert_same(a, b):
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("base", [{}, {"rotate": 20.0, "elastic_jitter": 1.0}])
def test_options_off_leave_crops_and_random_stream_unchanged(base):
    cfg_default = _cfg(**base)
    cfg_off = _cfg(zoom=1.0, gamma=1.0, blur=0.0, noise=0.0, **base)
    pairs, _ = load_training_data(cfg_default)
    a = CropSampler(pairs, cfg_default, np.random.default_rng(7))
    b = CropSampler(pairs, cfg_off, np.random.default_rng(7))
    # a sampler without the appearance step at all: switched off, it draws nothing
    c = CropSampler(pairs, cfg_off, np.random.default_rng(7))
    c._appearance = lambda img: img
    out_a, out_b, out_c = _samples(a), _samples(b), _samples(c)
    _assert_same(out_a, out_b)
    _assert_same(out_a, out_c)
    state = a.rng.bit_generator.state
    assert b.rng.bit_generator.state == state == c.rng.bit_generator.state


def test_edge_cut_makes_a_flat_band_without_instances():
    """edge_cut=1: every crop gets a band along one side that is flat (one value) and has
    no instance there; the rest of the crop is the crop without it (same random draws)."""
    image, labels = _disks()
    cfg = _cfg(edge_cut=1.0, crop_size=[64, 64])
    for seed in range(6):
        sampler = CropSampler([(image, labels)], cfg, np.random.default_rng(seed))
        sampler._appearance = lambda img: img  # the band as the cut leaves it
        img, tgt = sampler._augment(*sampler._crop_with_foreground())
        k = 8  # the band is at least crop // 8 deep
        sides = [(img[:k], tgt[:k]), (img[-k:], tgt[-k:]), (img[:, :k], tgt[:, :k]),
                 (img[:, -k:], tgt[:, -k:])]
        assert any(b.min() == b.max() and not t.any() for b, t in sides), seed
        assert tgt.any()  # the rest keeps its instances
    cfg_off = _cfg(edge_cut=0.0, crop_size=[64, 64])
    a = CropSampler([(image, labels)], cfg_off, np.random.default_rng(3))
    b = CropSampler([(image, labels)], _cfg(crop_size=[64, 64]), np.random.default_rng(3))
    _assert_same(_samples(a), _samples(b))  # off: the random stream of before


def test_appearance_changes_intensities_only():
    """Gamma, blur and noise act after the crop, flips and transposes: targets unchanged."""
    cfg_off = _cfg()
    cfg_on = _cfg(gamma=2.0, blur=1.5, noise=0.1)
    pairs, _ = load_training_data(cfg_off)
    changed = 0
    for seed in range(8):
        _, ni_off, pa_off = CropSampler(pairs, cfg_off, np.random.default_rng(seed)).sample()
        img_on, ni_on, pa_on = CropSampler(pairs, cfg_on, np.random.default_rng(seed)).sample()
        np.testing.assert_array_equal(ni_off, ni_on)
        np.testing.assert_array_equal(pa_off, pa_on)
        assert img_on.dtype == np.float32 and np.isfinite(img_on).all()
        img_off = CropSampler(pairs, cfg_off, np.random.default_rng(seed)).sample()[0]
        changed += not np.array_equal(img_off, img_on)
    # each effect applies to half of the crops: 1/8 of them get none
    assert changed >= 4


def test_blur_smooths_and_noise_roughens():
    image, labels = _disks(96)
    rough = []
    for train in ({"blur": 3.0}, {"noise": 0.3}):
        sampler = CropSampler([(image, labels)], _cfg(**train), np.random.default_rng(0))
        rough.append([np.abs(np.diff(sampler._appearance(image[:32, :32].copy()), axis=1)).mean()
                      for _ in range(12)])
    plain = np.abs(np.diff(image[:32, :32], axis=1)).mean()
    assert min(rough[0]) < 0.9 * plain  # some crops blurred
    assert max(rough[1]) > 1.5 * plain  # some crops noisier


# --------------------------------------------------------------------------- synth_extra
def test_synth_extra_images_come_after_the_training_images():
    base = {"data": {"source": "dsb-sample"}}
    cfg = config_from_dict(base)
    cfg_extra = config_from_dict(merge_config_dicts(
        base, {"data": {"synth_extra": 2, "synth_extra_fraction": 0.25}}))
    train, val = load_training_data(cfg)
    train_x, val_x = load_training_data(cfg_extra)
    assert len(train_x) == len(train) + 2
    for (a, la), (b, lb) in zip(train + val, train_x[:len(train)] + val_x):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert len(val_x) == len(val)
    extra = train_x[len(train):]
    for image, labels in extra:
        assert image.shape == labels.shape == (256, 256)
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert labels.max() > 0 and np.issubdtype(labels.dtype, np.integer)
        # normalised like the source images (percentile 1 / 99.8 -> 0 / 1)
        assert -0.5 < np.percentile(image, 1) < 0.5 < np.percentile(image, 99.8) < 1.5
    assert not np.array_equal(extra[0][0], extra[1][0])
    # deterministic
    again = load_training_data(cfg_extra)[0][len(train):]
    np.testing.assert_array_equal(again[0][0], extra[0][0])

    sampler = CropSampler(train_x, cfg_extra, np.random.default_rng(0))
    np.testing.assert_allclose(sampler.weights, [0.75, 0.125, 0.125])
    assert CropSampler(train, cfg, np.random.default_rng(0)).weights is None


def test_crops_come_from_the_extra_images_at_the_asked_share():
    """One own image and two extra ones of constant intensity 0, 1, 2: each crop shows
    which image it came from."""
    cfg = config_from_dict(merge_config_dicts(TINY, {
        "data": {"synth_extra": 2, "synth_extra_fraction": 0.3}, "train": {"min_foreground": 0.0}}))
    labels = np.ones((48, 48), np.int32)
    pairs = [(np.full((48, 48), float(i), np.float32), labels) for i in range(3)]
    sampler = CropSampler(pairs, cfg, np.random.default_rng(0))
    drawn = np.array([sampler._random_crop()[0][0, 0] for _ in range(2000)])
    counts = np.bincount(drawn.astype(int), minlength=3) / len(drawn)
    np.testing.assert_allclose(counts, [0.7, 0.15, 0.15], atol=0.04)


def test_synth_fluorescence_source_loads():
    raw = merge_config_dicts(TINY, {"data": {
        "source": "synth-fluorescence-nuclei", "n_images": 2, "val_fraction": 0.5}})
    raw["data"]["synth"] = {"diameter": 12.0, "snr": [4, 8]}
    cfg = config_from_dict(raw)
    train, val = load_training_data(cfg)
    assert len(train) == len(val) == 1
    for image, labels in train + val:
        assert image.shape == labels.shape == (64, 64)
        assert labels.max() > 3 and image.dtype == np.float32
    sampler = CropSampler(train, cfg, np.random.default_rng(0))
    image, numinst, _ = sampler.sample()
    assert image.shape == (1, 32, 32) and numinst[1].sum() > 0


def test_general_preset_uses_the_new_options():
    cfg = load_preset("nuclei2d-general")
    assert cfg.ndim == 2 and not cfg.data.overlapping
    # round trip through the dict form keeps the new keys
    assert config_from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("override", [
    {"train": {"zoom": 0.5}},
    {"train": {"gamma": 0.9}},
    {"train": {"blur": -1.0}},
    {"train": {"noise": -0.1}},
    {"data": {"synth_extra_fraction": 1.0}},
    {"data": {"synth_extra_fraction": 0.0}},
    {"data": {"synth_extra": -1}},
    {"data": {"synth_extra": 2, "image_size": [32, 32, 32]},
     "model": {"patchshape": [5, 5, 5]}, "train": {"crop_size": [16, 16, 16]}},
    {"data": {"source": "synth-worms", "overlapping": True, "synth": {}, "synth_extra": 2}},
    {"data": {"source": "synth-fluorescent-nuclei"}},
    {"train": {"zoom": "2"}},
    {"train": {"edge_cut": 1.5}},
])
def test_config_errors(override):
    raw = merge_config_dicts(TINY, override)
    with pytest.raises(ValueError):
        config_from_dict(raw)


def test_3d_config_without_synth_extra_is_valid():
    """The 3D error above comes from synth_extra, not from the rest of the 3D config."""
    cfg = config_from_dict(merge_config_dicts(TINY, {
        "data": {"image_size": [32, 32, 32]}, "model": {"patchshape": [5, 5, 5]},
        "train": {"crop_size": [16, 16, 16]}}))
    assert cfg.ndim == 3 and cfg.data.synth_extra == 0
