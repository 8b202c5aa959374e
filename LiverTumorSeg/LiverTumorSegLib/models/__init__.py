"""Segmentation networks, one file per architecture, built by name through the registry."""

from . import rec_unet, rec_unet_em, unet  # noqa: F401  (registers the architectures)
from .rec_unet import RECUNet
from .rec_unet_em import RECUNetEM
from .registry import build_model, input_contract, model_names, register_model
from .unet import UNet

__all__ = ["build_model", "input_contract", "model_names", "register_model", "RECUNet", "RECUNetEM", "UNet"]
