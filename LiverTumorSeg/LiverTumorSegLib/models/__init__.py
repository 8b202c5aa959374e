"""Segmentation networks, one file per architecture, built by name through the registry."""

from . import cares_unet, raunet, rec_unet, rec_unet_em, resunet, unet, unet_resnet34  # noqa: F401 (registers them)
from .rec_unet import RECUNet
from .rec_unet_em import RECUNetEM
from .registry import build_model, input_contract, model_names, register_model
from .unet import UNet

__all__ = ["build_model", "input_contract", "model_names", "register_model", "RECUNet", "RECUNetEM", "UNet"]
