"""Export a trained checkpoint as a bioimage.io model package, and validate packages.

Needs the ``train`` extra (torch, onnx, bioimageio.core). :func:`export_model` writes the
package; :func:`validate_package` runs bioimageio.core's model test for every weight format.

The package layout (read by ``ppp_zoo.runtime`` and :func:`ppp_zoo.postprocess.load_model_params`)
------------------------------------------------------------------------------------------------
A bioimage.io model, format 0.5 (built with bioimageio.spec 0.5.12), stored as a ``.zip`` or
a folder, with ``rdf.yaml`` at its root. ``rdf.yaml`` is written in the forms that the readers
the tools ship can read (:mod:`ppp_zoo.runtime.readers`): ``format_version: 0.5.10``, and
``covers`` / ``documentation`` as plain file names; ``config.ppp_zoo.checked_with`` lists
the readers the package was checked with.

Input: exactly one tensor, id ``raw``, float32, axes ``batch``, ``channel`` (one channel
named ``"raw"``), then the space axes (``z``,) ``y``, ``x``. Each space axis is parameterized:
``size = min + n * step``; ``step`` is the U-Net's ``size_divisor = 2**(depth - 1)`` and
``min`` a multiple of it (larger than twice the halo, see below), so every declared size is one
the network accepts as it is. The declared preprocessing is the only normalisation, and it
is exactly the one used in training:

- ``ensure_dtype`` to float32, then
- percentile mode: ``scale_range`` over the space axes with ``min_percentile = p_low``,
  ``max_percentile = p_high``, ``eps = 1e-6``: ``(x - lo) / (hi - lo + eps)``;
- or zero-mean-unit-variance mode: ``zero_mean_unit_variance`` over the space axes,
  ``eps = 1e-6``: ``(x - mean) / (std + eps)``.

:func:`ppp_zoo.predict.normalize_image` computes the same formulas.

Output (format 2): exactly one tensor, id ``prediction``, float32, axes batch, channel,
then the space axes, each declared as a size reference to the ``raw`` axis of the same name
(the output has the input's space size). Its ``3 + F`` channels:

- ``n0``, ``n1``, ``n2``: softmax probabilities of 0, 1, 2+ instances (numinst);
- ``f0`` ... ``f{F-1}``: the U-Net's last feature maps (``F`` = its base features), the input
  of the network's patch head.

The patch head (a 1x1 convolution) is not part of the weights: it ships as ``head.npz`` and
``ppp_zoo.postprocess`` applies it per pixel, ``sigmoid(weight @ f + bias)``: for variant
``"ppp"`` that gives the ``P = prod(patchshape)`` patch probabilities (channel ``k`` is the
offset ``unravel_index(k, patchshape) - patchshape // 2``, C order), for ``"ppp+dec"`` the
code probabilities that the attached decoder turns into patches. The tools that load the
package then move ``3 + F`` channels per pixel instead of ``3 + P`` (19 instead of 292 for
the default model), which keeps ilastik's tiles within its 100 MiB messages and deepImageJ's
within 2 GiB.

Every output space axis declares a ``halo``: the receptive-field radius of the U-Net, rounded
up to a multiple of ``step``. A tool that tiles the input discards that many pixels on each
side of each tile's output; a tile whose input is padded by the halo (mirror padding, numpy's
``symmetric``, as bioimage.io tools pad) and starts on a multiple of ``step`` gives the same
values as the whole image.

Weights: ``torchscript`` (traced; only operators that PyTorch 2.0 has, for deepImageJ) and
``onnx`` (``torch.onnx.export`` with ``dynamo=False``, opset 17, one self-contained file,
dynamic batch and space axes); the onnx entry names ``torchscript`` as its parent.
``--formats`` may leave one of them out.

Identity: ``config.bioimageio.nickname`` (lowercase letters, digits, ``-``, ``_``; from the
name unless given), which deepImageJ needs to list the model.

Attachments:

- ``patchperpix.json``: the same content as ``config["patchperpix"]``.
- ``head.npz``: ``weight (K, F)``, ``bias (K,)`` and ``patchshape`` of the patch head.
- ``decoder.npz`` (``ppp+dec`` only): the decoder weights keyed like the PyTorch
  ``state_dict`` of :class:`~ppp_zoo.model.PatchDecoder` (``net.<i>.weight``,
  ``net.<i>.bias``), plus the int arrays ``code_shape``, ``patchshape`` and ``features``, so
  that :mod:`ppp_zoo.postprocess.decode` needs nothing else.
- ``example_image.tif``: a larger example input (cover, ``ppp-zoo segment --demo``).
- ``deepimagej_run.ijm``: an ImageJ macro that runs the model in deepImageJ on the active
  image and saves ``<image>_prediction.tif`` for ``ppp-zoo postprocess``.

``config["patchperpix"]`` (and ``patchperpix.json``)::

    {"format": 2,
     "variant": "ppp" | "ppp+dec",
     "ndim": 2 | 3,
     "patchshape": [...],
     "assembly": AssemblyParams.to_dict(),  # every assembly parameter, incl. patchshape
                                            # and overlapping
     "output": {"tensor": "prediction",
                "channels": {"numinst": [0, 3], "features": [3, 3 + F]}},
     "head": {"source": "head.npz", "sha256": ..., "activation": "sigmoid",
              "produces": "patches" | "codes"},
     "decoder": null | {"source": "decoder.npz", "sha256": ..., "code_shape": [...],
                        "features": [...]},
     "postprocess": {"package": "ppp-zoo", "module": "ppp_zoo.postprocess",
                     "version": ppp_zoo.__version__},
     "normalize": {"mode", "p_low", "p_high"},   # for information: rdf.yaml's
                                                 # preprocessing is authoritative
     "halo": [per space axis], "min_shape": [...], "step": [...],
     "training": {"object_diameter": median size of the training instances in pixels,
                  "object_size": "diameter" (equivalent circle / sphere) | "width"
                                 (overlapping, worm-like instances),
                  "data": short description, "iterations": N},
     "metrics": {} | {"<data set>": {"ap50": ..., "ap75": ..., "ap90": ..., "avAP": ...}}}

Format 1 (read, no longer written) had two outputs, ``numinst`` and ``patches`` (or
``codes``), probabilities, and no ``output`` / ``head`` entries.

Test tensors (``.npy``, at the minimal size) are the raw input and the output of the
declared preprocessing plus the network on exactly that input (no halo padding), which is
how bioimageio.core's model test runs them. The sample tensor is the test input as a
``.tif``; its intensities are clipped at both ends so that the normalisation percentiles fall
on ties, and deepImageJ's nearest-rank percentiles give the same normalised input as
bioimageio.core's interpolated ones (the collection's deepImageJ check compares the sample's
output with the test output).
"""

from .validation import ValidationRow, validate_package
from .writer import ExportResult, export_model

__all__ = ["ExportResult", "ValidationRow", "export_model", "validate_package"]
