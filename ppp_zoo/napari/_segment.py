"""The Segment dock widget: an image layer through a model package into Labels layers.

Everything it computes is :func:`ppp_zoo.runtime.segment_image`; the widget only collects
the settings, runs that call in a napari ``thread_worker`` and turns the result into layers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import napari.layers
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..postprocess.model_package import PackageError
from ..runtime.models import embedded_model_path, embedded_models
from ..runtime.package import ModelPackage, open_package
from ..runtime.segment import InputError, SegmentResult, load_segmenter
from ._qt import (
    LayerBox,
    Relay,
    layer_array,
    notify_error,
    run_controls,
    space_transform,
)
from .layers import label_planes

MODES = {"as the package says": None, "fast": True, "exact": False}
STAGES = ("rescale", "preprocess", "inference", "decode", "assembly")


class Cancelled(Exception):
    """Raised in the worker thread when the user cancels a run."""


def segment_in_thread(model: Path, image, *, scale: float | str, fast: bool | None,
                      tile: tuple[int, ...] | None, cancel: threading.Event,
                      relay: Relay, tta: bool = False) -> SegmentResult:
    """The worker's job: load the package and segment, reporting tiles and stages,
    honouring cancel between tiles, between stages and between assembly steps."""
    def tile_progress(done: int, total: int) -> None:
        relay.event.emit(("tiles", done, total))
        if cancel.is_set():
            raise Cancelled

    def stage_progress(name: str) -> None:
        relay.event.emit(("stage", name))
        if cancel.is_set():
            raise Cancelled

    if cancel.is_set():
        raise Cancelled
    with load_segmenter(model) as segmenter:
        if tile is not None:
            tile = tile[:1] * segmenter.package.ndim
        relay.event.emit(("stage", "inference and assembly"))
        result = segmenter.segment(image, scale=scale, fast=fast, tile=tile, tta=tta,
                                   tile_progress=tile_progress, stage_progress=stage_progress)
    if cancel.is_set():
        raise Cancelled
    return result


def describe_result(result: SegmentResult) -> str:
    """Instance count, seconds per stage, the scale ``scale="auto"`` chose and notes, as
    the widget shows them."""
    count = f"{result.n_instances} instance{'s' if result.n_instances != 1 else ''}"
    stages = ", ".join(f"{k} {result.timings[k]:.2f} s" for k in STAGES if k in result.timings)
    total = sum(result.timings.values())
    lines = [f"{count} in {total:.1f} s ({result.n_tiles} tile{'s' if result.n_tiles != 1 else ''})",
             stages]
    auto = result.auto_scale
    if auto is not None:
        line = f"scale auto: {result.scale:.2f}"
        if auto["confident"]:
            line += (f" (objects about {auto['diameter']:.0f} px across, trained on "
                     f"{auto['trained_diameter']:.0f} px)")
        lines.append(line)
    lines += list(result.notes)
    return "\n".join(line for line in lines if line)


class SegmentWidget(QWidget):
    """Dock widget **Segment** of the ppp-zoo napari plugin."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.last_result: SegmentResult | None = None
        self._cancel = threading.Event()
        self._relay = Relay(self)
        self._relay.event.connect(self._on_event)

        self.model_box = QComboBox()
        for entry in embedded_models():
            self.model_box.addItem(entry["name"], entry["name"])
        self.model_box.currentIndexChanged.connect(self._update_hint)
        self.open_button = QPushButton("Package…")
        self.open_button.setToolTip("Choose a model package (.zip) from disk")
        self.open_button.clicked.connect(self._browse_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.open_button)

        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.image_box = LayerBox(self.viewer, napari.layers.Image)
        self.scale_box = QDoubleSpinBox()
        self.scale_box.setRange(0.05, 20.0)
        self.scale_box.setSingleStep(0.1)
        self.scale_box.setDecimals(2)
        self.scale_box.setValue(1.0)
        self.scale_box.setToolTip("Resample the image by this factor before the model, so "
                                  "that objects reach the size the model was trained on")
        self.scale_box.setEnabled(False)
        self.auto_scale_box = QCheckBox("auto")
        self.auto_scale_box.setChecked(True)
        self.auto_scale_box.setToolTip("Measure the objects in quick coarse passes and choose "
                                       "the scale that brings them to the training size (the "
                                       "chosen scale appears in the box after a run)")
        self.auto_scale_box.toggled.connect(lambda auto: self.scale_box.setEnabled(not auto))
        scale_row = QHBoxLayout()
        scale_row.addWidget(self.scale_box, 1)
        scale_row.addWidget(self.auto_scale_box)
        self.mode_box = QComboBox()
        self.mode_box.addItems(list(MODES))
        self.tile_box = QSpinBox()
        self.tile_box.setRange(0, 4096)
        self.tile_box.setSingleStep(64)
        self.tile_box.setSpecialValueText("auto")
        self.tile_box.setToolTip("Side of the inference tiles (auto: by the model's output size)")
        self.tta_box = QCheckBox("mirrors and rotations")
        self.tta_box.setToolTip("Test-time augmentation: average the network over the 8 "
                                "mirrors and rotations of the image (the same answer in "
                                "every orientation; about 3x the time)")

        (self.run_button, self.cancel_button, self.progress, self.status_label,
         controls) = run_controls("Segment", self.run, self.cancel)

        form = QFormLayout()
        form.addRow("model", model_row)
        form.addRow("", self.hint_label)
        form.addRow("image", self.image_box)
        form.addRow("scale", scale_row)
        form.addRow("assembly", self.mode_box)
        form.addRow("tile", self.tile_box)
        form.addRow("average", self.tta_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(controls)
        layout.addStretch(1)
        self._update_hint()

    # ----------------------------------------------------------------- model choice
    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model package", "",
                                              "Model packages (*.zip);;All files (*)")
        if path:
            self.set_model(path)

    def set_model(self, model: str | Path) -> bool:
        """Choose an embedded model by name or a package file; a package that cannot be
        read is reported in a notification (and False returned)."""
        key = str(model)
        index = self.model_box.findData(key)
        if index < 0:
            self.model_box.addItem(Path(key).name, key)
            index = self.model_box.count() - 1
        self.model_box.setCurrentIndex(index)
        return self._package() is not None

    def model_path(self) -> Path:
        """The package file of the current choice (raises PackageError)."""
        key = self.model_box.currentData()
        if key is None:
            raise PackageError("no model package chosen")
        if key in {e["name"] for e in embedded_models()}:
            return embedded_model_path(key)
        return Path(key)

    def _package(self, report: bool = True) -> ModelPackage | None:
        try:
            return open_package(self.model_path())
        except PackageError as err:
            if report:
                notify_error(str(err))
            return None

    def _update_hint(self, *_) -> None:
        package = self._package(report=False)
        if package is None:
            self.hint_label.setText("not a readable model package")
            return
        params = package.assembly_params()
        kind = "overlapping instances" if params.overlapping else "instances"
        text = f"{package.variant} {package.ndim}D model of {kind}, {'fast' if params.fast else 'exact'} assembly"
        if package.object_diameter:
            across = "wide" if package.object_size == "width" else "across"
            text += (f"; trained on objects about {package.object_diameter:.0f} px {across} "
                     "(scale = that / your objects' size)")
        self.hint_label.setText(text)

    # ----------------------------------------------------------------- running
    def scale(self) -> float | str:
        """``"auto"`` while the auto box is checked, else the spin box's factor."""
        return "auto" if self.auto_scale_box.isChecked() else self.scale_box.value()

    def run(self) -> None:
        """Check the inputs, then segment in a worker thread (returns at once)."""
        if self.worker is not None:
            return
        layer = self.image_box.layer()
        if layer is None:
            notify_error("Open an image layer to segment first (File > Open, or a sample)")
            return
        package = self._package()
        if package is None:
            return
        tile = (self.tile_box.value(),) if self.tile_box.value() else None
        self._cancel.clear()
        self.worker = create_worker(
            segment_in_thread, package.source, layer_array(layer),
            scale=self.scale(), fast=MODES[self.mode_box.currentText()], tile=tile,
            tta=self.tta_box.isChecked(), cancel=self._cancel, relay=self._relay,
            _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda result: self._show(result, layer))
        self.worker.errored.connect(lambda err: self._failed(err, layer.name))
        self.worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status_label.setText(f"segmenting {layer.name} …")
        self.worker.start()

    def cancel(self) -> None:
        """Stop the run at the next tile; a result that arrives anyway is dropped."""
        self._cancel.set()
        self.status_label.setText("cancelling …")

    def _on_event(self, event) -> None:
        if event[0] == "tiles":
            _, done, total = event
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            if done == total:
                self.status_label.setText("assembling instances …")
                self.progress.setRange(0, 0)

    def _failed(self, err: BaseException, layer_name: str) -> None:
        if isinstance(err, Cancelled):
            self.status_label.setText("cancelled: no layer added")
        elif isinstance(err, (InputError, PackageError, ValueError)):
            notify_error(f"Cannot segment layer '{layer_name}': {err}")
            self.status_label.setText(f"not segmented: {err}")
        else:
            notify_error(f"Segmentation of '{layer_name}' failed ({type(err).__name__}: {err})")
            self.status_label.setText("failed")

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self.last_result is not None else 0)

    def _show(self, result: SegmentResult, layer) -> None:
        """Add the result as Labels layers, all of them or none."""
        if self._cancel.is_set():
            return
        self.last_result = result
        self.status_label.setText(describe_result(result))
        if result.auto_scale is not None:  # show the factor auto chose
            self.scale_box.setValue(result.scale)
        for layer_kwargs in result_layers(result, layer.name, layer):
            self.viewer.add_labels(**layer_kwargs)


def result_layers(result: SegmentResult, name: str, image_layer) -> list[dict]:
    """``add_labels`` arguments for a result: one label image, or for overlapping instances
    the planes of :func:`~ppp_zoo.napari.layers.label_planes` (every instance whole, in one
    plane, with its own id)."""
    labels = result.labels
    overlapping = labels.dtype == bool
    planes = label_planes(labels) if overlapping else labels[None]
    space = space_transform(image_layer, planes.ndim - 1)
    out = []
    for k, plane in enumerate(planes):
        suffix = f" ({k + 1}/{len(planes)})" if len(planes) > 1 else ""
        out.append({"data": plane, "name": f"{name} instances{suffix}",
                    "metadata": {"ppp_zoo": result.summary()}, **space})
    return out
