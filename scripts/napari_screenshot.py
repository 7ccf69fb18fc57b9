"""Screenshot of the napari plugin for the README: the DSB 2018 sample segmented through the
Segment dock widget with the embedded model.

Needs ``.[napari]`` and a display (``xvfb-run -a python scripts/napari_screenshot.py``).
Writes ``model_specs/napari_segment.png`` (a 128-colour PNG, to keep the README light).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "model_specs" / "napari_segment.png")
    parser.add_argument("--size", default="1280x760", help="window size WxH")
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="ppp-zoo in napari")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample("ppp-zoo", "dsb2018")
    viewer.layers["DSB 2018 nuclei labels"].visible = False
    _, widget = viewer.window.add_plugin_dock_widget("ppp-zoo", "Segment")
    widget.image_box.choose(viewer.layers["DSB 2018 nuclei"])
    widget.run()
    deadline = time.monotonic() + 300
    while widget.worker is not None and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.last_result is None:
        raise SystemExit("segmentation did not finish")
    labels = viewer.layers["DSB 2018 nuclei instances"]
    labels.contour = 2
    labels.opacity = 0.9
    viewer.reset_view()
    # notification toasts (napari's notice about its Qt5 support) would cover the canvas
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(np.ascontiguousarray(shot[..., :3])).quantize(colors=128)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {shot.shape[1]}x{shot.shape[0]}, {args.out.stat().st_size / 1024:.0f} KB;"
          f" {widget.status_label.text().splitlines()[0]}")
    viewer.close()


if __name__ == "__main__":
    main()
