"""PyTorch PatchPerPix network: U-Net, numinst/patch heads, patch decoder and losses.

Needs torch (the ``train`` extra); :mod:`ppp_zoo.postprocess` does not import it.
"""

from .decoder import PatchDecoder, default_code_shape
from .losses import numinst_loss, ppp_dec_loss, ppp_loss, ppp_sampled_loss, total_loss
from .ppp import ExportNet, PatchPerPixNet, Variant, probabilities
from .unet import UNet

__all__ = ["ExportNet", "PatchDecoder", "PatchPerPixNet", "UNet", "Variant", "default_code_shape",
           "numinst_loss", "ppp_dec_loss", "ppp_loss", "ppp_sampled_loss", "probabilities",
           "total_loss"]
