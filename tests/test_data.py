"""Tests of ppp_zoo.data: real samples, synthetic generators and folder data sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ppp_zoo.data import (
    FolderDataset,
    dsb_split,
    load_bbbc010,
    load_dsb_sample,
    load_nuclei3d_sample,
    posture_source,
    synth_nuclei,
    synth_nuclei_dataset,
    synth_worms,
    synth_worms_dataset,
    write_sample,
    write_synth_nuclei,
    write_synth_worms,
)
from ppp_zoo.data import sample as sample_module
from ppp_zoo.data import synth as synth_module
from ppp_zoo.io import read_image, write_image, write_labels

needs_stardist = pytest.mark.skipif(
    sample_module.importlib.util.find_spec("stardist") is None, reason="stardist not installed"
)
needs_wormpose = pytest.mark.skipif(
    synth_module._posture_model_path() is None, reason="wormpose posture file not installed"
)


def _is_consecutive(labels: np.ndarray) -> bool:
    ids = np.unique(labels)
    ids = ids[ids != 0]
    return np.array_equal(ids, np.arange(1, len(ids) + 1))


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of labels (a < b) where a dilated by one pixel meets b."""
    pairs = set()
    for obj_id in range(1, int(labels.max()) + 1):
        grown = ndimage.binary_dilation(labels == obj_id)
        for other in np.unique(labels[grown]):
            if other > obj_id:
                pairs.add((obj_id, int(other)))
    return pairs


def _n_crossing_pairs(masks: np.ndarray) -> int:
    flat = masks.reshape(len(masks), -1).astype(np.int32)
    shared = flat @ flat.T
    return int(np.triu(shared > 0, k=1).sum())


# --------------------------------------------------------------------------- real samples


@pytest.fixture(scope="module")
def dsb():
    if sample_module.importlib.util.find_spec("stardist") is None:
        pytest.skip("stardist not installed")
    return load_dsb_sample()


def test_dsb_sample_has_125_consecutive_instances(dsb):
    image, labels = dsb
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint16
    assert labels.max() == 125 and _is_consecutive(labels)


def test_dsb_split_halves(dsb):
    split = dsb_split(*dsb)
    assert set(split) == {"train", "test"}
    for image, labels in split.values():
        assert image.shape == labels.shape == (512, 256)
        assert _is_consecutive(labels)
    # the standard test half: 57 nuclei, cut ones counted on both sides
    assert split["test"][1].max() == 57
    np.testing.assert_array_equal(split["test"][0], dsb[0][:, 256:])
    assert split["train"][1].max() + split["test"][1].max() > 125


def test_dsb_split_rejects_bad_input(dsb):
    with pytest.raises(ValueError, match=r"\(512, 512\) and \(512, 256\)"):
        dsb_split(dsb[0], dsb[1][:, :256])
    with pytest.raises(ValueError, match="column"):
        dsb_split(*dsb, column=512)


@needs_stardist
def test_nuclei3d_sample():
    image, labels = load_nuclei3d_sample()
    assert image.shape == labels.shape == (31, 61, 57)
    assert labels.max() == 51 and _is_consecutive(labels)


@needs_stardist
def test_write_sample_round_trip(tmp_path, dsb):
    paths = write_sample(tmp_path / "out")
    expected = {"image", "labels", "train_image", "train_labels", "test_image", "test_labels"}
    assert set(paths) == expected
    for key, path in paths.items():
        assert path == tmp_path / "out" / f"{key}.tif"
    np.testing.assert_array_equal(read_image(paths["image"]), dsb[0])
    np.testing.assert_array_equal(read_image(paths["labels"]), dsb[1])
    assert read_image(paths["test_labels"]).shape == (512, 256)
    assert read_image(paths["test_labels"]).max() == 57


def test_missing_stardist_gives_install_hint(monkeypatch):
    monkeypatch.setattr(sample_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install 'ppp-zoo\[data\]'"):
        load_dsb_sample()


# --------------------------------------------------------------------------- synthetic nuclei


def test_synth_nuclei_is_deterministic():
    a = synth_nuclei((96, 96), n_nuclei=12, seed=5)
    b = synth_nuclei((96, 96), n_nuclei=12, seed=5)
    c = synth_nuclei((96, 96), n_nuclei=12, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_synth_nuclei_labels_touch_and_are_consecutive():
    image, labels = synth_nuclei(seed=0)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert image.shape == labels.shape == (256, 256)
    assert 30 <= labels.max() <= 40 and _is_consecutive(labels)
    # clusters: several distinct pairs of nuclei share a boundary
    assert len(_touching_pairs(labels)) >= 5
    # nuclei are brighter than the background
    assert image[labels > 0].mean() > 3 * image[labels == 0].mean()


def test_synth_nuclei_3d():
    image, labels = synth_nuclei((24, 64, 64), n_nuclei=15, seed=2, radius=(4, 7))
    assert image.shape == labels.shape == (24, 64, 64)
    assert labels.max() >= 10 and _is_consecutive(labels)
    assert len(_touching_pairs(labels)) >= 1


def test_synth_nuclei_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"\(64,\)"):
        synth_nuclei((64,))
    with pytest.raises(ValueError, match="radius"):
        synth_nuclei(radius=(8, 4))


def test_synth_nuclei_dataset_and_writer(tmp_path):
    data = synth_nuclei_dataset(2, seed=1, shape=(64, 64), n_nuclei=6)
    assert len(data) == 2 and not np.array_equal(data[0][1], data[1][1])
    # the first images do not depend on how many are asked for
    first = synth_nuclei_dataset(1, seed=1, shape=(64, 64), n_nuclei=6)
    np.testing.assert_array_equal(first[0][1], data[0][1])
    paths = write_synth_nuclei(tmp_path, n_images=2, seed=1, shape=(64, 64), n_nuclei=6)
    assert [p.name for p, _ in paths] == ["nuclei_000.tif", "nuclei_001.tif"]
    assert paths[0][1] == tmp_path / "masks" / "nuclei_000.tif"
    np.testing.assert_array_equal(read_image(paths[1][1]), data[1][1])
    assert read_image(paths[0][0]).dtype == np.float32


# --------------------------------------------------------------------------- synthetic worms


@pytest.fixture(scope="module")
def worm_images():
    return [synth_worms(seed=seed) for seed in range(5)]


def test_synth_worms_count_and_crossings(worm_images):
    for image, masks in worm_images:
        assert image.shape == (520, 696) and image.dtype == np.float32
        assert masks.dtype == bool and masks.shape[1:] == (520, 696)
    assert np.mean([len(masks) for _, masks in worm_images]) >= 5
    with_crossing = sum(_n_crossing_pairs(masks) >= 1 for _, masks in worm_images)
    assert with_crossing >= 4


def test_synth_worms_are_long_and_thin(worm_images):
    radii, areas = [], []
    for _, masks in worm_images:
        for mask in masks:
            radii.append(ndimage.distance_transform_edt(np.pad(mask, 1)).max())
            areas.append(mask.sum())
    assert np.mean(radii) <= 12
    # a long thin body: area far larger than the disk of its widest point
    assert np.median(np.asarray(areas) / (np.pi * np.asarray(radii) ** 2)) > 8


def test_synth_worms_are_deterministic(worm_images):
    image, masks = synth_worms(seed=0)
    np.testing.assert_array_equal(image, worm_images[0][0])
    np.testing.assert_array_equal(masks, worm_images[0][1])


@needs_wormpose
def test_wormpose_postures_are_used_when_installed():
    assert posture_source() == "wormpose"
    auto = synth_worms(seed=0, n_worms=3)
    forced = synth_worms(seed=0, n_worms=3, posture="wormpose")
    plain = synth_worms(seed=0, n_worms=3, posture="plain")
    np.testing.assert_array_equal(auto[1], forced[1])
    assert not np.array_equal(auto[1], plain[1])


def test_plain_posture_fallback(monkeypatch):
    monkeypatch.setattr(synth_module, "_posture_model_path", lambda: None)
    assert posture_source() == "plain"
    image, masks = synth_worms(seed=1)
    assert len(masks) >= 5 and _n_crossing_pairs(masks) >= 1
    np.testing.assert_array_equal(masks, synth_worms(seed=1, posture="plain")[1])
    with pytest.raises(RuntimeError, match="wormpose"):
        synth_worms(seed=1, posture="wormpose")


def test_synth_worms_rejects_bad_parameters():
    with pytest.raises(ValueError, match="n_worms"):
        synth_worms(n_worms=(5, 2))
    with pytest.raises(ValueError, match="posture"):
        synth_worms(posture="spline")
    with pytest.raises(ValueError, match=r"\(8, 8, 8\)"):
        synth_worms(shape=(8, 8, 8))


def test_write_synth_worms_round_trip(tmp_path):
    kwargs = dict(shape=(128, 160), n_worms=(3, 4), length=(60, 90), width=(6, 8), posture="plain")
    data = synth_worms_dataset(2, seed=4, **kwargs)
    paths = write_synth_worms(tmp_path, n_images=2, seed=4, **kwargs)
    assert [p.name for p, _ in paths] == ["worms_000.tif", "worms_001.tif"]
    stored = read_image(paths[0][1])
    assert stored.dtype == np.uint8 and stored.shape == data[0][1].shape
    np.testing.assert_array_equal(stored.astype(bool), data[0][1])
    # the written set reads back as an overlapping folder data set
    dataset = FolderDataset(tmp_path, overlapping=True)
    image, masks = dataset[1]
    np.testing.assert_array_equal(image, data[1][0])
    np.testing.assert_array_equal(masks, data[1][1])


# --------------------------------------------------------------------------- folder data sets


def _make_folder(root, masks_name="masks"):
    labels = np.zeros((12, 16), np.uint16)
    labels[2:5, 2:6] = 3
    labels[7:10, 8:14] = 7
    write_image(root / "images" / "b.tif", np.ones((12, 16), np.float32))
    write_image(root / "images" / "a.npy", np.zeros((12, 16), np.uint8))
    write_labels(root / masks_name / "a.png", labels)
    write_labels(root / masks_name / "b.tif", labels)
    write_labels(root / masks_name / "orphan.tif", labels)  # no image: ignored
    return labels


def test_folder_dataset_pairs_by_stem(tmp_path):
    labels = _make_folder(tmp_path)
    data = FolderDataset(tmp_path)
    assert len(data) == 2 and data.names == ["a", "b"]
    image, target = data[0]
    assert image.dtype == np.uint8 and image.shape == (12, 16)
    np.testing.assert_array_equal(target, labels)
    np.testing.assert_array_equal(data[-1][0], np.ones((12, 16), np.float32))
    with pytest.raises(IndexError):
        data[2]


def test_folder_dataset_overlapping_from_labels_and_labels_folder(tmp_path):
    labels = _make_folder(tmp_path, masks_name="labels")
    _, masks = FolderDataset(tmp_path, overlapping=True)[1]
    assert masks.dtype == bool and masks.shape == (2, 12, 16)
    np.testing.assert_array_equal(masks[0], labels == 3)
    np.testing.assert_array_equal(masks[1], labels == 7)


def test_folder_dataset_mask_stack(tmp_path):
    stack = np.zeros((2, 12, 16), bool)
    stack[0, 2:8, 2:8] = stack[1, 5:10, 5:12] = True
    write_image(tmp_path / "images" / "w.tif", np.ones((12, 16), np.float32))
    write_labels(tmp_path / "masks" / "w.tif", stack)
    np.testing.assert_array_equal(FolderDataset(tmp_path, overlapping=True)[0][1], stack)
    with pytest.raises(ValueError, match="overlapping=True"):
        FolderDataset(tmp_path)[0]


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="no 'images' folder"):
        FolderDataset(tmp_path)
    write_image(tmp_path / "images" / "x.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="no 'masks' or 'labels' folder"):
        FolderDataset(tmp_path)
    write_labels(tmp_path / "masks" / "y.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="no annotation for 1 image.*x"):
        FolderDataset(tmp_path)
    write_labels(tmp_path / "masks" / "x.tif", np.zeros((8, 9), np.uint16))
    with pytest.raises(ValueError, match=r"\(8, 9\) does not match .*\(8, 8\)"):
        FolderDataset(tmp_path)[0]
    write_labels(tmp_path / "masks" / "x.png", np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="two files named 'x'"):
        FolderDataset(tmp_path)


# --------------------------------------------------------------------------- BBBC010


def _make_bbbc010(root):
    rng = np.random.default_rng(0)
    prefix = "1649_1109_0003_Amp5-1_B_20070424"
    for well, n_worms in (("A01", 2), ("B12", 3)):
        for chan in ("w1", "w2"):
            offset = 0 if chan == "w1" else 10000
            image = rng.integers(0, 4000, (20, 24)).astype(np.uint16) + offset
            write_image(root / "images" / f"{prefix}_{well}_{chan}_9E84F49F.tif", image)
        for k in range(n_worms, 0, -1):
            mask = np.zeros((20, 24), np.uint8)
            mask[k : k + 5, 2 * k : 2 * k + 10] = 255
            write_image(root / "masks" / f"{well}_{k:02d}_ground_truth.png", mask)


def test_load_bbbc010(tmp_path):
    _make_bbbc010(tmp_path)
    wells = load_bbbc010(tmp_path)
    assert [w for w, _, _ in wells] == ["A01", "B12"]
    well, image, masks = wells[1]
    assert image.shape == (20, 24) and image.max() < 10000  # the w1 channel
    assert masks.dtype == bool and masks.shape == (3, 20, 24)
    assert masks[0, 1, 2] and not masks[1, 1, 2]  # ordered by worm number: worm 1 first
    assert [int(m.sum()) for m in masks] == [50, 50, 50]
    _, w2_image, _ = load_bbbc010(tmp_path, channel="w2")[0]
    assert w2_image.min() >= 10000


def test_load_bbbc010_errors(tmp_path):
    with pytest.raises(ValueError, match="no 'images' or 'BBBC010_v2_images' folder"):
        load_bbbc010(tmp_path)
    _make_bbbc010(tmp_path)
    with pytest.raises(ValueError, match="channel 'w3'"):
        load_bbbc010(tmp_path, channel="w3")
    for path in (tmp_path / "masks").glob("B12_*"):
        path.unlink()
    with pytest.raises(ValueError, match="wells B12"):
        load_bbbc010(tmp_path)
    write_image(tmp_path / "masks" / "B12_01_ground_truth.png", np.zeros((20, 25), np.uint8))
    with pytest.raises(ValueError, match=r"\(20, 25\) differs"):
        load_bbbc010(tmp_path)
