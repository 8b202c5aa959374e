"""A plain U-Net (Ronneberger et al. 2015) in 2-D or 3-D: the reference point other architectures are judged
against, and the simplest network for 3-D patch models run by the sliding-window inferer.

Double conv-BN-ReLU blocks, ``depth`` 2x max-pools, nearest-neighbour upsampling + conv, skip concatenation.
Its input contract follows from its depth: sizes must be multiples of ``2 ** depth``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import UpConv, conv_bn_relu, conv_nd, max_pool_nd
from .registry import register_model


@register_model("unet")
class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 2, base_width: int = 16, depth: int = 4,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base_width < 1 or not 1 <= depth <= 6:
            raise ValueError("in_channels, out_channels, base_width >= 1 and depth in 1..6 are required")
        self.in_channels, self.out_channels, self.spatial_dims = in_channels, out_channels, spatial_dims
        self.size_multiple = 2 ** depth
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.pool = max_pool_nd(spatial_dims)(kernel_size=2, stride=2)
        self.down = nn.ModuleList(nn.Sequential(*conv_bn_relu(a, b, spatial_dims), *conv_bn_relu(b, b, spatial_dims))
                                  for a, b in zip([in_channels] + widths[:-1], widths))
        self.up = nn.ModuleList(UpConv(b, a, spatial_dims) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(nn.Sequential(*conv_bn_relu(2 * a, a, spatial_dims),
                                                 *conv_bn_relu(a, a, spatial_dims)) for a in widths[:-1])
        self.head = conv_nd(spatial_dims)(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(reversed(self.up), reversed(self.merge)):
            x = merge(torch.cat((skips.pop(), up(x)), dim=1))
        return self.head(x)
