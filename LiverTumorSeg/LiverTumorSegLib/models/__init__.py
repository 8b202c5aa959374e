"""Segmentation networks, one file per architecture, built by name through the registry."""

from . import rec_unet, rec_unet_em  # noqa: F401  (registers the architectures)
from .rec_unet import RECUNet
from .rec_unet_em import RECUNetEM
from .registry import build_model, model_names, register_model

__all__ = ["build_model", "model_names", "register_model", "RECUNet", "RECUNetEM"]
