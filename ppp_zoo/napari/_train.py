"""The Train dock widget: train on open layers (or a folder), export, segment.

Everything it computes is :func:`ppp_zoo.train.train`, :func:`ppp_zoo.export.export_model`
and :func:`ppp_zoo.runtime.segment_image`; the widget writes the chosen layers as a training
folder, runs those calls in a napari ``thread_worker``, draws the live curves and adds the
result as Labels layers.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import napari.layers
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QVBoxLayout,
    QWidget,
)

from ..config import (
    Config,
    config_from_dict,
    load_config,
    load_preset,
    merge_config_dicts,
    preset_names,
)
from ..errors import SetupError
from ..runtime.segment import segment_image
from ._qt import LayerBox, PathField, Relay, layer_array, notify_error, run_controls
from ._segment import describe_result, result_layers
from .layers import check_training_pair, write_training_folder

TRAIN_EXTRA = ("training needs PyTorch and the [train] extra: pip install torch==2.13.0 && "
               "pip install \"ppp-zoo[train]\"")
PLOT_EVERY_S = 0.5
"""The curves are redrawn at most this often."""


def training_config(preset: str, overrides: Path | None, data: dict) -> Config:
    """The preset, overridden by a TOML file (as ``ppp-zoo train FILE --preset``), with
    ``[data]`` replaced by where the widget's data lie."""
    cfg = load_config(overrides, preset) if overrides else load_preset(preset)
    return config_from_dict(merge_config_dicts(cfg.to_dict(), {"data": data}))


def train_in_thread(cfg: Config, run_dir: Path, *, minutes: float, export_path: Path,
                    validate: bool, image, layers: tuple | None, cancel: threading.Event,
                    relay: Relay) -> dict:
    """The worker's job: write the layers as a training folder, train, export the best
    weights, segment ``image`` with the package. Cancel stops training (checkpoints kept)
    and skips the steps after it."""
    from ..export import export_model
    from ..train import train

    if layers is not None:
        write_training_folder(*layers[:2], Path(cfg.data.path), ndim=cfg.ndim, rgb=layers[2])
    out: dict = {"run_dir": run_dir}
    out["train"] = train(cfg, run_dir, max_minutes=minutes, progress=False,
                         callback=lambda event: relay.event.emit(("train", event)),
                         stop=cancel.is_set)
    if out["train"].cancelled or cancel.is_set():
        return out
    relay.event.emit(("phase", "exporting the model package"))
    out["export"] = export_model(out["train"].best_checkpoint, export_path, validate=validate,
                                 progress=lambda step: relay.event.emit(("phase", f"export: {step}")))
    if image is not None and not cancel.is_set():
        relay.event.emit(("phase", "segmenting with the new model"))
        out["segment"] = segment_image(export_path, image)
    return out


class TrainWidget(QWidget):
    """Dock widget **Train** of the ppp-zoo napari plugin."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.last_outcome: dict | None = None
        self.history: dict = {"loss": [], "val": []}
        self._cancel = threading.Event()
        self._relay = Relay(self)
        self._relay.event.connect(self._on_event)
        self._drawn = 0.0

        self.image_box = LayerBox(self.viewer, napari.layers.Image)
        self.labels_box = LayerBox(self.viewer, napari.layers.Labels, optional=True)
        self.folder_field = PathField("folder", "Training folder (images/ + masks/)",
                                      placeholder="or a folder with images/ and masks/")
        self.preset_box = QComboBox()
        self.preset_box.addItems(preset_names())
        if "nuclei2d-cpu" in preset_names():
            self.preset_box.setCurrentText("nuclei2d-cpu")
        self.preset_box.currentTextChanged.connect(self._preset_changed)
        self.overrides_field = PathField("open", "Configuration overrides (TOML)",
                                         "TOML files (*.toml)", "optional overrides (.toml)")
        self.minutes_box = QDoubleSpinBox()
        self.minutes_box.setRange(0.05, 24 * 60.0)
        self.minutes_box.setDecimals(2)
        self.minutes_box.setSuffix(" min")
        self.run_field = PathField("folder", "Run folder (checkpoints)",
                                   placeholder="default: ~/ppp-zoo-runs/<time>")
        self.export_field = PathField("save", "Export the model package as",
                                      "Model packages (*.zip)", "default: <run folder>/model.zip")
        self.validate_box = QCheckBox("test the package with bioimageio.core")
        self.validate_box.setChecked(True)

        (self.train_button, self.cancel_button, self.progress, self.status_label,
         controls) = run_controls("Train", self.run, self.cancel)

        form = QFormLayout()
        form.addRow("image", self.image_box)
        form.addRow("labels", self.labels_box)
        form.addRow("or folder", self.folder_field)
        form.addRow("preset", self.preset_box)
        form.addRow("overrides", self.overrides_field)
        form.addRow("train for", self.minutes_box)
        form.addRow("run folder", self.run_field)
        form.addRow("export to", self.export_field)
        form.addRow("", self.validate_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(controls)
        self.canvas = self._make_plot()
        if self.canvas is not None:
            layout.addWidget(self.canvas, 1)
        else:
            layout.addStretch(1)
        self._preset_changed(self.preset_box.currentText())
        if importlib.util.find_spec("torch") is None:
            self.train_button.setEnabled(False)
            self.status_label.setText(TRAIN_EXTRA)

    # ----------------------------------------------------------------- settings
    def _preset_changed(self, name: str) -> None:
        try:
            minutes = load_preset(name).train.max_minutes
        except ValueError:
            return
        self.minutes_box.setValue(minutes or 10.0)

    def _make_plot(self):
        if importlib.util.find_spec("matplotlib") is None:
            return None
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self._loss_ax = figure.add_subplot(211)
        self._val_ax = figure.add_subplot(212)
        canvas = FigureCanvasQTAgg(figure)
        canvas.setMinimumHeight(220)
        return canvas

    def _draw(self, force: bool = False) -> None:
        if self.canvas is None or (not force and time.monotonic() - self._drawn < PLOT_EVERY_S):
            return
        self._drawn = time.monotonic()
        ax, vx = self._loss_ax, self._val_ax
        ax.clear()
        vx.clear()
        if self.history["loss"]:
            it, loss = zip(*self.history["loss"])
            ax.plot(it, loss, lw=0.8)
        ax.set_ylabel("loss", fontsize=8)
        if self.history["val"]:
            it, val = zip(*self.history["val"])
            vx.plot(it, val, "o-", ms=3)
        vx.set_ylabel("val avAP", fontsize=8)
        vx.set_xlabel("iteration", fontsize=8)
        for a in (ax, vx):
            a.tick_params(labelsize=7)
        self.canvas.draw_idle()

    # ----------------------------------------------------------------- running
    def _data(self, run_dir: Path):
        """``([data] section, layers to write or None)``, or None after a notification."""
        folder = self.folder_field.path()
        if folder is not None:
            if not (folder / "images").is_dir():
                notify_error(f"The training folder {folder} has no images/ folder")
                return None
            return {"source": "folder", "path": str(folder)}, None
        image_layer, labels_layer = self.image_box.layer(), self.labels_box.layer()
        if image_layer is None or labels_layer is None:
            notify_error("Choose an image layer and its Labels layer, or a training folder")
            return None
        return ({"source": "folder", "path": str(run_dir / "data"), "val_fraction": 0.5},
                (layer_array(image_layer), layer_array(labels_layer),
                 bool(getattr(image_layer, "rgb", False))))

    def run(self) -> None:
        """Check the inputs, then train, export and segment in a worker thread."""
        if self.worker is not None:
            return
        run_dir = self.run_field.path() or (
            Path.home() / "ppp-zoo-runs" / time.strftime("run-%Y%m%d-%H%M%S"))
        chosen = self._data(run_dir)
        if chosen is None:
            return
        data, layers = chosen
        try:
            cfg = training_config(self.preset_box.currentText(), self.overrides_field.path(),
                                  data)
            if layers is not None:
                check_training_pair(layers[0], layers[1], cfg.ndim, rgb=layers[2])
        except (ValueError, FileNotFoundError) as err:
            names = ""
            if layers is not None:
                names = (f" on '{self.labels_box.layer().name}' with "
                         f"'{self.image_box.layer().name}'")
            notify_error(f"Cannot train{names}: {err}")
            return
        export_path = self.export_field.path() or run_dir / "model.zip"
        image_layer = self.image_box.layer()
        self.history = {"loss": [], "val": []}
        self.last_outcome = None
        self._cancel.clear()
        self.worker = create_worker(
            train_in_thread, cfg, run_dir, minutes=self.minutes_box.value(),
            export_path=export_path, validate=self.validate_box.isChecked(),
            image=None if image_layer is None else layer_array(image_layer), layers=layers,
            cancel=self._cancel, relay=self._relay, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda outcome: self._done(outcome, image_layer))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, cfg.train.iterations)
        self.progress.setValue(0)
        self.status_label.setText(f"training in {run_dir} …")
        self.worker.start()

    def cancel(self) -> None:
        """Stop training after the current iteration; its checkpoints are kept."""
        self._cancel.set()
        self.status_label.setText("cancelling after this iteration …")

    def _on_event(self, event) -> None:
        kind, payload = event
        if kind == "phase":
            self.status_label.setText(payload + " …")
            self.progress.setRange(0, 0)
            return
        if "loss" in payload:
            self.history["loss"].append((payload["iteration"], payload["loss"]))
            self.progress.setMaximum(payload["iterations"])
            self.progress.setValue(payload["iteration"])
            if not self._cancel.is_set():
                self.status_label.setText(f"iteration {payload['iteration']}, loss "
                                          f"{payload['loss']:.4f}")
        else:
            self.history["val"].append((payload["iteration"], payload["val"]["avAP"]))
        self._draw(force="val" in payload)

    def _failed(self, err: BaseException) -> None:
        if isinstance(err, (ValueError, SetupError, OSError)):
            notify_error(f"Training stopped: {err}")
        else:
            notify_error(f"Training failed ({type(err).__name__}: {err})")
        self.status_label.setText("stopped by an error")

    def _finished(self) -> None:
        self.worker = None
        self.train_button.setEnabled(importlib.util.find_spec("torch") is not None)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self._draw(force=True)

    def _done(self, outcome: dict, image_layer) -> None:
        self.last_outcome = outcome
        result = outcome["train"]
        if result.cancelled or "export" not in outcome:
            self.status_label.setText(
                f"cancelled at iteration {result.iterations}: checkpoints kept in "
                f"{result.out_dir} (last.pt, best.pt; ppp-zoo train --resume continues)")
            return
        lines = [f"{result.iterations} iterations in {result.seconds:.0f} s, final loss "
                 f"{result.final_loss:.4f}"
                 + (f", best val avAP {result.best_avAP:.3f}" if result.best_avAP is not None
                    else ""),
                 f"model package: {outcome['export'].path}"]
        if "segment" in outcome and image_layer is not None:
            lines.append(describe_result(outcome["segment"]))
            for kwargs in result_layers(outcome["segment"], f"{image_layer.name} (new model)",
                                        image_layer):
                self.viewer.add_labels(**kwargs)
        self.status_label.setText("\n".join(lines))
