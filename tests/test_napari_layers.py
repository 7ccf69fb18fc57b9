"""The napari plugin's array handling, without napari: overlapping masks as Labels planes,
and layers written as a training folder that the trainer reads back."""

from __future__ import annotations

import numpy as np
import pytest

from ppp_zoo.config import config_from_dict
from ppp_zoo.data import FolderDataset, synth_worms
from ppp_zoo.napari.layers import check_training_pair, label_planes, write_training_folder


def test_every_worm_whole_in_exactly_one_plane():
    """Real crossing worms: no pixel of any mask is lost, no plane holds two ids at a pixel."""
    _, masks = synth_worms(shape=(128, 128), n_worms=(5, 5), seed=3, length=(60.0, 80.0),
                           width=(6.0, 8.0), posture="plain", cross_fraction=1.0)
    assert (masks.sum(axis=0) > 1).any(), "the test needs crossing worms"
    planes = label_planes(masks)
    assert planes.dtype == np.int32 and 2 <= len(planes) <= len(masks)
    for i, mask in enumerate(masks):
        holding = [k for k, plane in enumerate(planes) if (plane == i + 1).any()]
        assert len(holding) == 1
        np.testing.assert_array_equal(planes[holding[0]] == i + 1, mask)


def test_planes_of_no_overlap_and_no_instance():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = masks[1, 2:] = True
    assert label_planes(masks).shape == (1, 4, 4)
    assert label_planes(np.zeros((0, 3, 3, 3), bool)).shape == (1, 3, 3, 3)
    with pytest.raises(ValueError, match="mask stack"):
        label_planes(np.zeros((4, 4), bool))


def test_training_folder_splits_a_validation_strip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((40, 100)).astype(np.float32)
    labels = np.zeros((40, 100), np.int32)
    labels[5:15, 5:15], labels[20:30, 80:95] = 1, 2
    write_training_folder(image, labels, tmp_path, ndim=2)
    data = FolderDataset(tmp_path)
    assert data.names == ["train", "val"]
    (train_img, train_lab), (val_img, val_lab) = data[0], data[1]
    assert train_img.shape == (40, 75) and val_img.shape == (40, 25)
    np.testing.assert_array_equal(np.concatenate([train_lab, val_lab], axis=1), labels)
    from ppp_zoo.train import load_training_data

    cfg = config_from_dict({"data": {"source": "folder", "path": str(tmp_path),
                                     "val_fraction": 0.5}})
    train_pairs, val_pairs = load_training_data(cfg)
    assert len(train_pairs) == 1 and val_pairs[0][0].shape == (40, 25)


@pytest.mark.parametrize("image, labels, ndim, message", [
    (np.zeros((64, 64)), np.ones((64, 60), int), 2, "labels have shape (64, 60) but the image"),
    (np.zeros((64, 64, 3)), np.ones((64, 64), int), 2, None),
    (np.zeros((8, 64, 64)), np.ones((8, 64, 64), int), 2, "trains a 2D model"),
    (np.zeros((64, 64)), np.zeros((64, 64), int), 2, "no instance"),
    (np.zeros((64, 40)), np.ones((64, 40), int), 2, "40 pixels wide"),
])
def test_training_pair_checks(image, labels, ndim, message):
    if message is None:
        check_training_pair(image, labels, ndim, rgb=True)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_training_pair(image, labels, ndim)
