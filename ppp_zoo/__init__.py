"""ppp-zoo: PatchPerPix instance segmentation as bioimage.io models.

Where each step of the pipeline lives, top floor first (a floor imports only the floors
below it: the contracts in ``.importlinter``, checked by ``lint-imports`` in CI):

- ``ppp_zoo.cli``, ``ppp_zoo.napari``  the ``ppp-zoo`` command line; the napari plugin
- ``ppp_zoo.export``       the bioimage.io package writer and its validation       (torch)
- ``ppp_zoo.train``        the training loop, validation by assembly, checkpoints (torch)
- ``ppp_zoo.predict``      a checkpoint as one more engine of the runtime          (torch)
- ``ppp_zoo.model``        the PyTorch network (U-Net, heads, decoder) and losses  (torch)
- ``ppp_zoo.runtime``      the consumer side: open a model package, run it with ONNX Runtime
                           or TorchScript in tiles, assemble (``ppp-zoo segment``); the
                           tools' rules and readers (``validate --for``); ``doctor``; the
                           dask blocks
- ``ppp_zoo.config``, ``ppp_zoo.data``, ``ppp_zoo.evaluate``  training configuration and
                           presets; sample, synthetic and folder data, GT targets;
                           matching, AP and avAP
- ``ppp_zoo.io``           reading and atomic writing of images, labels and arrays; the raw
                           outputs that deepImageJ and ilastik save
- ``ppp_zoo.postprocess``  the standalone instance assembly (and its one block geometry),
                           the per-pixel patch head and decoder, and the one checked reader of
                           model packages (numpy + numba only; imports nothing else of ppp_zoo)
- ``ppp_zoo.errors``       the project's own errors, reported as one line
"""

__version__ = "0.1.0"
