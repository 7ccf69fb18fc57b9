"""ppp-zoo: PatchPerPix instance segmentation as bioimage.io models.

Where each step of the pipeline lives:

- ``ppp_zoo.data``         sample and synthetic data, folder data sets, GT targets
- ``ppp_zoo.model``        the PyTorch network (U-Net, numinst and patch/code heads, decoder)
                           and its losses
- ``ppp_zoo.postprocess``  the standalone instance assembly (numpy + numba only)
- ``ppp_zoo.evaluate``     matching, AP and avAP
- ``ppp_zoo.io``           reading and atomic writing of images, labels and arrays
- ``ppp_zoo.cli``          the ``ppp-zoo`` command line
"""

__version__ = "0.1.0"
