"""The napari plugin of ppp-zoo (``pip install "ppp-zoo[napari]"``), declared in
``napari.yaml``: dock widgets **Segment** and **Train**, and sample data.

The widgets hold no algorithm: they call :mod:`ppp_zoo.runtime`, :mod:`ppp_zoo.train` and
:mod:`ppp_zoo.export` in a napari worker thread and turn arrays into layers
(:mod:`ppp_zoo.napari.layers`, which needs no napari). A model of overlapping instances
gives a mask per instance; napari's Labels layers hold one id per pixel, so the masks are
shown as the fewest Labels layers in which no two instances overlap, each instance whole
in one of them with its own id (:func:`ppp_zoo.napari.layers.label_planes`).
"""
