"""Qt pieces shared by the dock widgets: layer choosers, a thread-safe relay, messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)


def notify_error(message: str) -> None:
    """One clear sentence in a napari notification (a full stop added when missing)."""
    message = message.strip()
    show_error(message if message.endswith((".", "?", "!")) else message + ".")


def notify_info(message: str) -> None:
    show_info(message)


def run_controls(label: str, run, cancel):
    """The controls under both dock widgets' forms: a ``label`` button calling ``run`` and a
    disabled Cancel button calling ``cancel`` side by side, an idle progress bar, and a
    wrapping status line.

    Returns ``(run_button, cancel_button, progress, status_label, box)``; ``box`` is the
    layout holding them all.
    """
    run_button = QPushButton(label)
    run_button.clicked.connect(run)
    cancel_button = QPushButton("Cancel")
    cancel_button.setEnabled(False)
    cancel_button.clicked.connect(cancel)
    buttons = QHBoxLayout()
    buttons.addWidget(run_button)
    buttons.addWidget(cancel_button)
    progress = QProgressBar()
    progress.setRange(0, 1)
    progress.setValue(0)
    status_label = QLabel()
    status_label.setWordWrap(True)
    box = QVBoxLayout()
    box.addLayout(buttons)
    box.addWidget(progress)
    box.addWidget(status_label)
    return run_button, cancel_button, progress, status_label, box


class Relay(QObject):
    """Carries events from a worker thread to the widget (a queued Qt connection)."""

    event = Signal(object)


class LayerBox(QComboBox):
    """A combo box of the viewer's layers of one kind, kept in step with the layer list.

    ``optional`` adds a first entry ``(none)``.
    """

    def __init__(self, viewer, kind: type, *, optional: bool = False, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.kind = kind
        self.optional = optional
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            emitter.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_name(self, event=None) -> None:
        if event is not None and hasattr(event, "value"):
            event.value.events.name.connect(self.refresh)

    def refresh(self, event=None) -> None:
        current = self.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, self.kind)]
        self.blockSignals(True)
        self.clear()
        if self.optional:
            self.addItem("(none)")
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif names and not self.optional:
            self.setCurrentIndex(len(names) - 1)  # the newest layer
        self.blockSignals(False)

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        if not name or name == "(none)" or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, self.kind) else None

    def choose(self, layer) -> None:
        self.refresh()
        self.setCurrentText(layer.name)


class PathField(QWidget):
    """A line edit with a button that opens a file (or folder) dialog."""

    def __init__(self, mode: str, caption: str, file_filter: str = "", placeholder: str = "",
                 parent=None):
        super().__init__(parent)
        self.mode, self.caption, self.file_filter = mode, caption, file_filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.button = QPushButton("…")
        self.button.setMaximumWidth(32)
        self.button.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(self.button)

    def browse(self) -> None:
        if self.mode == "folder":
            path = QFileDialog.getExistingDirectory(self, self.caption, self.text())
        elif self.mode == "save":
            path, _ = QFileDialog.getSaveFileName(self, self.caption, self.text(),
                                                  self.file_filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, self.caption, self.text(),
                                                  self.file_filter)
        if path:
            self.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        self.edit.setText(str(text))

    def path(self) -> Path | None:
        return Path(self.text()).expanduser() if self.text() else None


def layer_array(layer) -> np.ndarray:
    """A layer's data as one array (the full-resolution level of a multiscale layer)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data)


def space_transform(layer, ndim: int) -> dict:
    """``scale`` and ``translate`` of ``layer``'s last ``ndim`` axes, so that labels of
    ``ndim`` axes lie on the image."""
    return {"scale": tuple(layer.scale[-ndim:]), "translate": tuple(layer.translate[-ndim:])}
