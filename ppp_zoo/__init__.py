"""ppp-zoo: PatchPerPix instance segmentation as bioimage.io models."""

__version__ = "0.1.0"
