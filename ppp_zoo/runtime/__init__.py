"""Run a PatchPerPix model package on images: the consumer side of ppp-zoo.

Needs numpy, numba, onnxruntime, pyyaml and scikit-image only (torch for the optional
TorchScript engine); bioimageio is not imported.

- :mod:`.package`: open a package (zip or folder) and check what ``segment`` needs.
- :mod:`.preprocess`: the standard bioimage.io preprocessing operations in NumPy.
- :mod:`.engine`: ONNX Runtime (CPU or CUDA) and TorchScript engines.
- :mod:`.tiling`: tiled inference with the package's halo, any input size.
- :mod:`.segment`: image in, instance labels out (:func:`segment_image`).
- :mod:`.models`: the packages shipped with ppp-zoo.
- :mod:`.doctor`: what the installation runs on (ONNX Runtime build, GPU, numba, torch).
"""

from .engine import Engine, create_engine
from .models import embedded_model_path, embedded_models, resolve_model
from .package import ModelPackage, PackageError, open_package
from .preprocess import preprocess
from .segment import InputError, Segmenter, SegmentResult, load_segmenter, segment_image
from .tiling import run_tiled

__all__ = ["Engine", "InputError", "ModelPackage", "PackageError", "SegmentResult", "Segmenter",
           "create_engine", "embedded_model_path", "embedded_models", "load_segmenter",
           "open_package", "preprocess", "resolve_model", "run_tiled", "segment_image"]
