"""Pre-activation residual U-Net of the "ResUNet liver -> tumor cascade" (1998anwesha/Liver_tumor_segmentation,
``imageprocessing/liver_segmentation.ipynb`` cells 13-14; the tumour notebook builds the same network).

A PyTorch port of the authors' Keras model, kept numerically faithful so that results can be compared and their
``.h5`` weights could be transferred layer by layer:

* every convolution has a bias (Keras ``Conv2D`` default) and is initialised like Keras (Glorot-uniform kernel,
  zero bias); PyTorch's default Kaiming-uniform init would make a "reproduction" train from a different start;
* BatchNorm uses eps 1e-3 and PyTorch momentum 0.01: Keras' ``momentum=0.99`` weights the *old* running
  statistic, PyTorch's ``momentum`` weights the *new* batch statistic, so 0.99 in Keras is 1 - 0.99 here;
* strided convolutions pad like TensorFlow's ``padding="same"``, i.e. the odd pixel goes after, not before:
  a symmetric PyTorch ``padding=1`` keeps the output size but shifts the sampling grid by one input pixel
  relative to the 1x1 shortcut, which is not the network the authors trained;
* skips are concatenated as ``[upsampled, skip]``, the authors' channel order.

The network returns logits; the authors' head ends in a sigmoid, so model files for it name ``sigmoid`` as
their output activation (one channel per stage: liver, then tumour on the liver-masked slice).

At the authors' configuration (``in_channels=3`` grey slice stacked three times, ``out_channels=1``,
``base_width=16``, 256 x 256) it has 4,715,761 trainable parameters, the notebook's Keras "trainable" count;
Keras' 7,296 "non-trainable" parameters are the BatchNorm running statistics, buffers here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import batch_norm_nd, conv_nd, set_batch_norm_momentum
from .registry import register_model

#: Keras BatchNormalization defaults, translated (see the module docstring for why momentum is 1 - 0.99)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _batch_norm(channels: int, spatial_dims: int) -> nn.Module:
    return batch_norm_nd(spatial_dims)(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv(nn.Module):
    """Convolution padded as TensorFlow's ``padding="same"`` does, so strided layers sample the authors' grid.

    With stride 1 and an odd kernel TF pads symmetrically, which the convolution does itself. With stride s it
    pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total per axis, the smaller half before: for an even size,
    stride 2 and a 3x3 kernel that is nothing before and one pixel after, which no static PyTorch padding gives.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("only odd kernel sizes are used by this network")
        self.kernel_size, self.stride = kernel_size, stride
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = conv_nd(spatial_dims)(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.conv(x)
        k, s = self.kernel_size, self.stride
        pads: list[int] = []
        for n in reversed(x.shape[2:]):  # F.pad takes the last axis first
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return self.conv(F.pad(x, pads) if any(pads) else x)


class PreActConv(nn.Module):
    """The authors' ``conv_block``: BN -> ReLU -> 3x3 conv (pre-activation, as in He et al. 2016 identity maps)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        self.bn = _batch_norm(in_channels, spatial_dims)
        self.relu = nn.ReLU()  # not in place: in the stem and blocks the input also feeds the shortcut
        self.conv = SameConv(in_channels, out_channels, 3, stride, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.relu(self.bn(x)))


class Shortcut(nn.Module):
    """Projection shortcut (1x1 conv -> BN, no activation): always present, even where an identity would fit."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv = SameConv(in_channels, out_channels, 1, stride, spatial_dims)
        self.bn = _batch_norm(out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Stem(nn.Module):
    """The authors' ``stem``: the first conv has no BN-ReLU in front (the raw image would gain nothing from it)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.conv = SameConv(in_channels, out_channels, 3, 1, spatial_dims)
        self.block = PreActConv(out_channels, out_channels, 1, spatial_dims)
        self.shortcut = Shortcut(in_channels, out_channels, 1, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x)) + self.shortcut(x)


class ResidualBlock(nn.Module):
    """The authors' ``residual_block``: two pre-activation convs (the first may be strided) plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        self.block1 = PreActConv(in_channels, out_channels, stride, spatial_dims)
        self.block2 = PreActConv(out_channels, out_channels, 1, spatial_dims)
        self.shortcut = Shortcut(in_channels, out_channels, stride, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block2(self.block1(x))


@register_model("resunet")
class ResUNet(nn.Module):
    """Stem, four stride-2 residual encoder blocks, a two-conv bridge without shortcut, four decoder stages of
    nearest x2 upsampling + ``cat([up, skip])`` + residual block, and a 1x1 head (logits).

    Decoder widths are the authors': the first decoder stage keeps the bridge width (16 x base) and each later
    one halves it, so the last stage has 2 x base channels, not base as in a symmetric U-Net.
    """

    #: input sizes must be multiples of this: four stride-2 stages, and each upsampled map must match its skip
    size_multiple = 16

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_width: int = 16,
                 spatial_dims: int = 2, norm_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base_width < 1:
            raise ValueError("in_channels, out_channels and base_width must be >= 1")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.base_width, self.spatial_dims = base_width, spatial_dims
        f = [base_width * m for m in (1, 2, 4, 8, 16)]
        d = spatial_dims
        self.stem = Stem(in_channels, f[0], d)
        self.encoder = nn.ModuleList(ResidualBlock(a, b, 2, d) for a, b in zip(f[:-1], f[1:]))
        self.bridge = nn.Sequential(PreActConv(f[4], f[4], 1, d), PreActConv(f[4], f[4], 1, d))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        # stage i: up (width of the previous stage) + skip f[3 - i] -> f[4 - i]
        up_widths = [f[4], f[4], f[3], f[2]]
        self.decoder = nn.ModuleList(ResidualBlock(u + f[3 - i], f[4 - i], 1, d) for i, u in enumerate(up_widths))
        self.head = SameConv(f[1], out_channels, 1, 1, d)
        self.reset_parameters()
        set_batch_norm_momentum(self, norm_momentum)

    def reset_parameters(self) -> None:
        """Keras initialisation (Glorot-uniform kernels, zero biases): the authors' training started from it.

        PyTorch's ``xavier_uniform_`` computes fan-in/out with the receptive field, exactly as Keras does.
        BatchNorm already starts as in Keras (gamma 1, beta 0, running mean 0, variance 1).
        """
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x in_channels x spatial (each size a multiple of 16) -> N x out_channels logits, same spatial size."""
        skips = [self.stem(x)]
        for block in self.encoder:
            skips.append(block(skips[-1]))
        x = self.bridge(skips.pop())
        for block in self.decoder:
            x = block(torch.cat((self.upsample(x), skips.pop()), dim=1))
        return self.head(x)
