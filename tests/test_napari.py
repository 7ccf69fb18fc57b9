"""The napari plugin in a real viewer (pytest-qt, napari's ``make_napari_viewer``).

Needs napari, pytest-qt and a display: ``xvfb-run -a python -m pytest tests/test_napari.py``
(CI does this); without them the module is skipped. The widgets are opened through the
plugin's manifest, buttons are clicked, and the tests wait for the worker threads.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed (pip install .[napari])")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display for napari's canvas: run under xvfb-run -a", allow_module_level=True)

from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from ppp_zoo.data import dsb_split, synth_nuclei  # noqa: E402
from ppp_zoo.evaluate import evaluate_image  # noqa: E402
from ppp_zoo.napari._segment import Cancelled  # noqa: E402
from ppp_zoo.runtime.segment import SegmentResult  # noqa: E402

WAIT_MS = 120_000
# napari 0.9 on PyQt5 says at every viewer that only Qt6 detects the system theme
pytestmark = pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget("ppp-zoo", name)
    return widget


def click_and_wait(qtbot, widget, button):
    qtbot.mouseClick(button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def one_sentence(records_before: int) -> str:
    """The single notification shown since ``records_before``: one sentence, one line."""
    new = notification_manager.records[records_before:]
    assert len(new) == 1, [n.message for n in new]
    message = new[0].message
    assert "\n" not in message and message.endswith(".")
    assert not re.search(r"\.\s+[A-Z]", message), message
    return message


def labels_layers(viewer):
    return [layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels)]


def test_sample_data_opens(viewer):
    viewer.open_sample("ppp-zoo", "dsb2018")
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape == (512, 512)
    assert isinstance(labels, napari.layers.Labels) and labels.data.max() == 125
    viewer.layers.clear()
    viewer.open_sample("ppp-zoo", "worms")
    assert isinstance(viewer.layers[0], napari.layers.Image)
    assert len(labels_layers(viewer)) >= 1
    ids = np.concatenate([np.unique(layer.data) for layer in labels_layers(viewer)])
    assert len(ids[ids > 0]) == len(set(ids[ids > 0])) >= 5  # every worm once, own id


def test_segment_dsb_test_half_through_the_widget(viewer, qtbot, dsb_sample):
    """The embedded model on the half it never saw: the widget gives what the CLI gives,
    with scale auto by default (the chosen factor shown in the status line and the box)."""
    test_image, test_labels = dsb_split(*dsb_sample)["test"]
    viewer.add_image(test_image, name="DSB test half", scale=(0.5, 0.5))
    widget = dock(viewer, "Segment")
    assert widget.model_box.currentText() == "ppp-nuclei2d"
    assert "px across" in widget.hint_label.text()
    assert widget.auto_scale_box.isChecked() and not widget.scale_box.isEnabled()
    assert widget.scale() == "auto"
    click_and_wait(qtbot, widget, widget.run_button)
    layer = viewer.layers["DSB test half instances"]
    assert isinstance(layer, napari.layers.Labels) and layer.data.shape == (512, 256)
    assert tuple(layer.scale) == (0.5, 0.5)  # on top of the image
    ap50 = evaluate_image(layer.data, test_labels).ap["0.5"]
    assert ap50 >= 0.75, ap50
    text = widget.status_label.text()
    assert f"{layer.data.max()} instances" in text and "assembly" in text and "inference" in text
    result = widget.last_result
    assert result.auto_scale["confident"] and 0.75 <= result.scale <= 1.25
    assert f"scale auto: {result.scale:.2f} (objects about" in text
    assert widget.scale_box.value() == pytest.approx(result.scale, abs=0.005)
    assert not widget.scale_box.isEnabled()


def test_segment_at_a_fixed_scale(viewer, qtbot, dsb_sample):
    """Unchecking auto enables the spin box; its factor is used as it is."""
    viewer.add_image(dsb_sample[0][:128, :160], name="crop")
    widget = dock(viewer, "Segment")
    widget.auto_scale_box.setChecked(False)
    assert widget.scale_box.isEnabled()
    widget.scale_box.setValue(0.5)
    assert widget.scale() == 0.5
    click_and_wait(qtbot, widget, widget.run_button)
    result = widget.last_result
    assert result.scale == 0.5 and result.auto_scale is None
    assert viewer.layers["crop instances"].data.shape == (128, 160)
    assert "scale auto" not in widget.status_label.text()
    assert widget.scale_box.value() == 0.5
    widget.auto_scale_box.setChecked(True)
    assert not widget.scale_box.isEnabled() and widget.scale() == "auto"


def test_segment_with_test_time_augmentation(viewer, qtbot, dsb_sample):
    """The 'mirrors and rotations' box runs the network on the 8 orientations and gives
    the labels of segment_image(..., tta=True)."""
    import numpy as np

    from ppp_zoo.runtime import embedded_model_path, segment_image

    crop = dsb_sample[0][:128, :160]
    viewer.add_image(crop, name="crop")
    widget = dock(viewer, "Segment")
    widget.auto_scale_box.setChecked(False)
    widget.tta_box.setChecked(True)
    click_and_wait(qtbot, widget, widget.run_button)
    result = widget.last_result
    want = segment_image(embedded_model_path(), crop, tta=True, device="cpu")
    assert result.n_tiles == want.n_tiles >= 8  # one network run per orientation, at least
    assert np.array_equal(viewer.layers["crop instances"].data, want.labels)


def test_cancel_adds_no_layer(viewer, qtbot, dsb_sample):
    viewer.add_image(dsb_sample[0], name="DSB")
    widget = dock(viewer, "Segment")
    widget.tile_box.setValue(64)  # many tiles: cancel is honoured between them
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    assert widget.worker is not None and not widget.run_button.isEnabled()
    with qtbot.waitSignal(widget.worker.errored, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    assert isinstance(blocker.args[0], Cancelled)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert labels_layers(viewer) == [] and "cancelled" in widget.status_label.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_segment_bad_inputs_one_notification_each(viewer, qtbot, tmp_path):
    widget = dock(viewer, "Segment")
    before = len(notification_manager.records)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)  # no image layer
    assert "image layer" in one_sentence(before) and widget.worker is None

    rng = np.random.default_rng(0)
    for name, data, expected in [
            ("rgb stack", rng.integers(0, 255, (4, 48, 48, 3), dtype=np.uint8), "4 dimensions"),
            ("4d", rng.random((2, 3, 48, 48)), "4 dimensions"),
            ("two channels", rng.random((48, 48, 2)), "no channel axis")]:
        viewer.add_image(data, name=name, rgb=name == "rgb stack")
        widget.image_box.choose(viewer.layers[name])
        before = len(notification_manager.records)
        click_and_wait(qtbot, widget, widget.run_button)
        message = one_sentence(before)
        assert f"'{name}'" in message and expected in message and "2D model" in message
    assert labels_layers(viewer) == []

    for bad, content in [("garbage.zip", b"not a zip at all"), ("empty.zip", b"")]:
        (tmp_path / bad).write_bytes(content)
        before = len(notification_manager.records)
        assert not widget.set_model(tmp_path / bad)
        assert "model package" in one_sentence(before)
        before = len(notification_manager.records)
        qtbot.mouseClick(widget.run_button, Qt.LeftButton)
        assert bad in one_sentence(before) and widget.worker is None
    assert labels_layers(viewer) == []


def test_overlapping_instances_all_shown(viewer, dsb_sample):
    """A mask stack (a model of overlapping instances) becomes Labels layers holding every
    instance whole; a 3D result becomes one 3D Labels layer."""
    from ppp_zoo.data import synth_worms

    image, masks = synth_worms(shape=(128, 128), n_worms=(5, 5), seed=3, length=(60.0, 80.0),
                               width=(6.0, 8.0), posture="plain", cross_fraction=1.0)
    layer = viewer.add_image(image, name="worms")
    widget = dock(viewer, "Segment")
    widget._show(SegmentResult(masks, len(masks), {"assembly": 0.1}), layer)
    shown = labels_layers(viewer)
    assert len(shown) >= 2 and shown[0].name == f"worms instances (1/{len(shown)})"
    for i, mask in enumerate(masks):
        holding = [s for s in shown if (s.data == i + 1).any()]
        assert len(holding) == 1
        np.testing.assert_array_equal(holding[0].data == i + 1, mask)
    volume = viewer.add_image(np.zeros((6, 32, 32), np.float32), name="volume")
    labels3d = np.zeros((6, 32, 32), np.int32)
    labels3d[1:4, 5:15, 5:15] = 1
    widget._show(SegmentResult(labels3d, 1, {}), volume)
    assert viewer.layers["volume instances"].data.ndim == 3


def test_worm_model_through_the_widget_shows_crossing_worms(viewer, qtbot):
    """Choosing the embedded ppp-worms2d: its overlapping masks come out as Labels layers
    in which every worm is whole, and crossing worms lie in different layers."""
    from ppp_zoo.data import synth_worms
    from ppp_zoo.runtime.models import embedded_models

    if "ppp-worms2d" not in {m["name"] for m in embedded_models()}:
        pytest.skip("ppp-worms2d is not embedded in this installation")
    image, _ = synth_worms(shape=(256, 256), n_worms=(6, 6), seed=11, length=(90.0, 160.0),
                           width=(7.0, 9.0), posture="plain", cross_fraction=1.0)
    viewer.add_image(image, name="worms")
    widget = dock(viewer, "Segment")
    assert widget.set_model("ppp-worms2d")
    assert "px wide" in widget.hint_label.text()
    widget.auto_scale_box.setChecked(False)
    click_and_wait(qtbot, widget, widget.run_button)
    masks = widget.last_result.labels
    assert masks.dtype == bool and (masks.sum(axis=0) >= 2).any()
    shown = labels_layers(viewer)
    assert len(shown) >= 2
    for i, mask in enumerate(masks):
        holding = [s for s in shown if (s.data == i + 1).any()]
        assert len(holding) == 1 and np.array_equal(holding[0].data == i + 1, mask)


TINY_OVERRIDES = """
[model]
patchshape = [7, 7]
base_features = 4
depth = 2

[train]
iterations = {iterations}
batch_size = 1
crop_size = [32, 32]
val_every = 3
rotate = 0.0
elastic_jitter = 0.0
tune_thresholds = false
"""


@pytest.fixture
def nuclei_layers(viewer):
    image, labels = synth_nuclei((64, 96), n_nuclei=10, seed=2)
    return (viewer.add_image(image, name="nuclei"),
            viewer.add_labels(labels.astype(np.int32), name="nuclei labels"))


def train_widget(viewer, tmp_path, iterations):
    widget = dock(viewer, "Train")
    (tmp_path / "tiny.toml").write_text(TINY_OVERRIDES.format(iterations=iterations))
    widget.overrides_field.setText(tmp_path / "tiny.toml")
    widget.run_field.setText(tmp_path / "run")
    widget.export_field.setText(tmp_path / "tiny.zip")
    widget.validate_box.setChecked(False)
    return widget


def test_train_few_iterations_export_and_segment(viewer, qtbot, tmp_path, nuclei_layers):
    image_layer, labels_layer = nuclei_layers
    widget = train_widget(viewer, tmp_path, iterations=6)
    widget.image_box.choose(image_layer)
    widget.labels_box.choose(labels_layer)
    click_and_wait(qtbot, widget, widget.train_button)
    outcome = widget.last_outcome
    assert outcome is not None and outcome["train"].iterations == 6
    assert [it for it, _ in widget.history["loss"]] == list(range(1, 7))  # live curve
    assert [it for it, _ in widget.history["val"]] == [3, 6]
    assert (tmp_path / "tiny.zip").is_file() and (tmp_path / "run" / "best.pt").is_file()
    new = viewer.layers["nuclei (new model) instances"]
    assert new.data.shape == (64, 96) and "model package" in widget.status_label.text()
    # the exported package segments in the Segment widget as well
    segment = dock(viewer, "Segment")
    assert segment.set_model(tmp_path / "tiny.zip")
    segment.image_box.choose(image_layer)
    click_and_wait(qtbot, segment, segment.run_button)
    np.testing.assert_array_equal(viewer.layers["nuclei instances"].data, new.data)


def test_train_cancel_keeps_the_checkpoint(viewer, qtbot, tmp_path, nuclei_layers):
    image_layer, labels_layer = nuclei_layers
    widget = train_widget(viewer, tmp_path, iterations=100000)
    widget.labels_box.choose(labels_layer)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(widget.history["loss"]) >= 2, timeout=WAIT_MS)
    qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    result = widget.last_outcome["train"]
    assert result.cancelled and result.iterations < 100000
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "tiny.zip").exists()
    assert "cancelled" in widget.status_label.text()
    assert [layer.name for layer in labels_layers(viewer)] == ["nuclei labels"]


def test_train_bad_inputs_one_notification_each(viewer, qtbot, tmp_path, nuclei_layers):
    image_layer, _ = nuclei_layers
    widget = train_widget(viewer, tmp_path, iterations=2)
    before = len(notification_manager.records)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)  # no Labels layer chosen
    assert "Labels layer" in one_sentence(before) and widget.worker is None
    viewer.add_labels(np.ones((64, 90), np.int32), name="other shape")
    widget.labels_box.choose(viewer.layers["other shape"])
    widget.image_box.choose(image_layer)
    before = len(notification_manager.records)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    message = one_sentence(before)
    assert "'other shape'" in message and "(64, 90)" in message and "(64, 96)" in message
    assert widget.worker is None and not (tmp_path / "run").exists()
