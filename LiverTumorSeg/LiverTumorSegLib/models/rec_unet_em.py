"""REC-UNet "EM" variant (459806555/REC-UNet, ``REC_UNet_EM.py``): the authors' LiTS liver model.

Same wiring and parameter count as ``rec_unet``; each block is two plain conv-BN-ReLU layers followed
by triplet attention, without the residual mean. Kept separate because the authors' liver weights
use these key names (``ConvN.conv.{0,1,3,4,6}``).
"""

from __future__ import annotations

from torch import nn

from .blocks import TripletAttention, conv_bn_relu
from .rec_unet import RECUNetBase
from .registry import register_model


class ConvAttentionBlock(nn.Module):
    """The authors' ``Conv_block``: conv-BN-ReLU x2 then triplet attention."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(*conv_bn_relu(in_channels, out_channels),
                                  *conv_bn_relu(out_channels, out_channels), TripletAttention())

    def forward(self, x):
        return self.conv(x)


@register_model("rec_unet_em")
class RECUNetEM(RECUNetBase):
    """REC-UNet with plain conv + triplet-attention blocks."""

    def _block(self, in_channels: int, out_channels: int) -> nn.Module:
        return ConvAttentionBlock(in_channels, out_channels)
