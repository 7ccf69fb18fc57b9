"""Sample data of the napari plugin: napari ``LayerData`` tuples, built without napari."""

from __future__ import annotations

from ..data import load_dsb_sample, synth_worms
from .layers import label_planes


def dsb_sample() -> list[tuple]:
    """The real DSB 2018 nuclei crop (512 x 512) and its 125 labelled nuclei.

    The embedded model was trained on the left half (columns 0-255) only.
    """
    image, labels = load_dsb_sample()
    return [(image, {"name": "DSB 2018 nuclei"}, "image"),
            (labels, {"name": "DSB 2018 nuclei labels", "opacity": 0.5}, "labels")]


def worms_sample() -> list[tuple]:
    """A synthetic image of overlapping worms (seed 0) and its worm masks, shown as Labels
    layers in which no two worms overlap (see :func:`~ppp_zoo.napari.layers.label_planes`)."""
    image, masks = synth_worms(shape=(256, 256), n_worms=(5, 7), seed=0,
                               length=(100.0, 140.0), width=(8.0, 11.0))
    planes = label_planes(masks)
    layers = [(image, {"name": "synthetic worms"}, "image")]
    for k, plane in enumerate(planes):
        suffix = f" ({k + 1}/{len(planes)})" if len(planes) > 1 else ""
        layers.append((plane, {"name": f"synthetic worms masks{suffix}", "opacity": 0.5},
                       "labels"))
    return layers
