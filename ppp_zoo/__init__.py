"""ppp-zoo: PatchPerPix instance segmentation as bioimage.io models.

Where each step of the pipeline lives (lower floors never import higher ones):

- ``ppp_zoo.postprocess``  the standalone instance assembly, the per-pixel patch head and
                           decoder, and the one checked reader of model packages
                           (numpy + numba only)
- ``ppp_zoo.evaluate``     matching, AP and avAP
- ``ppp_zoo.io``           reading and atomic writing of images, labels and arrays; the raw
                           outputs that deepImageJ and ilastik save
- ``ppp_zoo.errors``       the errors a user can fix, reported as one line
- ``ppp_zoo.data``         sample and synthetic data, folder data sets, GT targets
- ``ppp_zoo.runtime``      the consumer side: open a model package, run it with ONNX Runtime
                           or TorchScript in tiles, assemble (``ppp-zoo segment``); the rules
                           of deepImageJ / ilastik / bioimage.io (``validate --for``);
                           ``doctor``
- ``ppp_zoo.config``       training configuration and presets
- ``ppp_zoo.model``        the PyTorch network (U-Net, numinst and patch/code heads, decoder)
                           and its losses                                         (torch)
- ``ppp_zoo.train``        the training loop, validation by assembly, checkpoints (torch)
- ``ppp_zoo.predict``      checkpoint loading and inference                       (torch)
- ``ppp_zoo.export``       the bioimage.io package writer and bioimageio.core validation
- ``ppp_zoo.cli``          the ``ppp-zoo`` command line
"""

__version__ = "0.1.0"
