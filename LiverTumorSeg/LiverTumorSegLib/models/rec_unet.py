"""REC-UNet: residual Enhancement-Calibration U-Net (459806555/REC-UNet, ``REC_UNet.py``).

Encoder and decoder blocks are REM blocks (two 3x3 convs, triplet attention on the second, output the
mean of both); skips pass through CM attention gates. Unlike the authors' forward, which reads a
3-slice stack and silently keeps only ``x[:, 1]``, this network uses every input channel, so
``in_channels = 2k+1`` gives real 2.5-D context; an imported authors' model is ``in_channels=1`` and
the pipeline feeds it the centre slice.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CalibrationGate, TripletAttention, UpConv, conv_bn_relu
from .registry import register_model


class REMBlock(nn.Module):
    """Residual Enhancement Module: ``0.5 * (x1 + EM(conv(x1)))`` with ``x1 = conv(x)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn_relu(in_channels, out_channels))
        self.conv2 = nn.Sequential(*conv_bn_relu(out_channels, out_channels), TripletAttention())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        return 0.5 * (x1 + self.conv2(x1))


class RECUNetBase(nn.Module):
    """The U-Net wiring shared by both variants; subclasses choose the block."""

    #: input height and width must be multiples of this (four 2x2 max-pools)
    size_multiple = 16

    def _block(self, in_channels: int, out_channels: int) -> nn.Module:
        raise NotImplementedError

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base_width: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base_width < 2 or base_width % 2:
            raise ValueError("in_channels and out_channels must be >= 1 and base_width an even number >= 2")
        self.in_channels, self.out_channels, self.base_width = in_channels, out_channels, base_width
        f = [base_width * m for m in (1, 2, 4, 8, 16)]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Conv1 = self._block(in_channels, f[0])
        self.Conv2 = self._block(f[0], f[1])
        self.Conv3 = self._block(f[1], f[2])
        self.Conv4 = self._block(f[2], f[3])
        self.Conv5 = self._block(f[3], f[4])
        self.Up5 = UpConv(f[4], f[3])
        self.Att5 = CalibrationGate(f[3], f[3], f[2])
        self.Up_conv5 = self._block(f[4], f[3])
        self.Up4 = UpConv(f[3], f[2])
        self.Att4 = CalibrationGate(f[2], f[2], f[1])
        self.Up_conv4 = self._block(f[3], f[2])
        self.Up3 = UpConv(f[2], f[1])
        self.Att3 = CalibrationGate(f[1], f[1], f[0])
        self.Up_conv3 = self._block(f[2], f[1])
        self.Up2 = UpConv(f[1], f[0])
        self.Att2 = CalibrationGate(f[0], f[0], f[0] // 2)
        self.Up_conv2 = self._block(f[1], f[0])
        self.Conv = nn.Conv2d(f[0], out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x in_channels x H x W (H, W multiples of 16) -> N x out_channels logits."""
        e1 = self.Conv1(x)
        e2 = self.Conv2(self.pool(e1))
        e3 = self.Conv3(self.pool(e2))
        e4 = self.Conv4(self.pool(e3))
        e5 = self.Conv5(self.pool(e4))
        d5 = self.Up5(e5)
        d5 = self.Up_conv5(self.Att5(g=d5, x=e4))
        d4 = self.Up4(d5)
        d4 = self.Up_conv4(self.Att4(g=d4, x=e3))
        d3 = self.Up3(d4)
        d3 = self.Up_conv3(self.Att3(g=d3, x=e2))
        d2 = self.Up2(d3)
        d2 = self.Up_conv2(self.Att2(g=d2, x=e1))
        return self.Conv(d2)


@register_model("rec_unet")
class RECUNet(RECUNetBase):
    """REC-UNet with REM blocks (the authors' LiTS tumour and MSD models)."""

    def _block(self, in_channels: int, out_channels: int) -> nn.Module:
        return REMBlock(in_channels, out_channels)
