"""CARes-UNet (Xu et al., Med. Phys. 48(11):7127-7140, 2021; zylye123/CARes-UNet ``model.py``).

A U-Net whose encoder downsamples with strided convolutions instead of pooling, whose blocks are residual, and
whose decoder upsamples with CARAFE (Wang et al., ICCV 2019): the x2 upsampling kernel is predicted per pixel
from the features themselves, so boundaries of small lesions are reassembled from their own neighbourhood rather
than smeared by a fixed interpolation. Each CARAFE is followed by a 1x1 convolution that halves the channels
(the authors' addition; the original CARAFE keeps them).

What is kept from the authors, and why:

* Attribute names and ``nn.Sequential`` indices (``encoder1`` ... ``decoder8``, ``down1`` ... ``down4``,
  ``up1`` ... ``up4``, ``conv``, ``classfier`` [sic], and inside the blocks ``bconv``, ``resnet``, ``inc``,
  ``conv1x1``, ``down``, ``encoder``, ``out``), so that their released checkpoint (a plain ``state_dict``,
  no ``module.`` prefix) loads with ``strict=True``.
* Every residual block builds a 1x1 projection shortcut although every block in this network maps C to C
  channels and therefore adds its input unchanged; those 2,100,864 parameters never take part in the forward,
  but they are in the authors' state dict and in their published size (56,518,418). ``unused_shortcuts=False``
  leaves them out (54,417,554), for training from scratch where dead weights only cost memory and optimiser
  state.
* The CARAFE kernel encoder reads 64 compressed channels (``Cm``) at every level, whatever the network width.
* Skips are concatenated as ``[skip, upsampled]`` (skip first), the authors' channel order.

What is not kept: the authors' model ends in ``nn.Sigmoid`` and their training then feeds those probabilities to
a softmax/cross-entropy loss, activating twice. This network returns logits; the model file's
``output_activation`` decides the activation. The authors' prediction is ``argmax`` over two channels
(background, lesion) of the sigmoid output; sigmoid is monotonic, so ``softmax`` in the model file gives the
same decisions for their weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model


class BasicConv2d(nn.Module):
    """Conv (no bias: the BN after it has one) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """Two 3x3 conv-BN with a shortcut, ReLU after the sum (He et al. 2016, basic block).

    The projection shortcut is used only when the widths differ. ``unused_shortcut`` builds it anyway when they
    are equal, because the authors' checkpoints contain it.
    """

    def __init__(self, in_channels: int, out_channels: int, unused_shortcut: bool = True) -> None:
        super().__init__()
        self.project = in_channels != out_channels
        self.inc = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if self.project or unused_shortcut:
            self.conv1x1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                         nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv1x1(x) if self.project else x
        return F.relu(shortcut + self.inc(x))


class ConvBlock(nn.Module):
    """The authors' ``Conv_Block``: a conv that changes the width, then a residual block at the new width."""

    def __init__(self, in_channels: int, out_channels: int, unused_shortcut: bool = True) -> None:
        super().__init__()
        self.bconv = BasicConv2d(in_channels, out_channels, 3, padding=1)
        self.resnet = ResBlock(out_channels, out_channels, unused_shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(self.bconv(x))


def carafe_reassemble(x: torch.Tensor, kernels: torch.Tensor, k_up: int, scale: int) -> torch.Tensor:
    """Upsample ``x`` (N, C, H, W) by ``scale`` with one normalised ``k_up`` x ``k_up`` kernel per output pixel.

    ``kernels`` is (N, k_up**2, scale**2, H, W): for low-resolution position (i, j), tap t = dy * k_up + dx and
    sub-pixel s = a * scale + b, the weight with which ``x[:, :, i + dy - r, j + dx - r]`` (zero outside,
    r = k_up // 2) enters ``out[:, :, scale * i + a, scale * j + b]``. The neighbourhood is gathered at low
    resolution, once for all sub-pixels, which is why the upsampled map never needs its own k_up**2 copy.
    """
    n, c, h, w = x.shape
    taps = k_up * k_up
    if kernels.shape != (n, taps, scale * scale, h, w):
        raise ValueError(f"kernels must be {(n, taps, scale * scale, h, w)}, not {tuple(kernels.shape)}")
    patches = F.unfold(x, k_up, padding=k_up // 2).view(n, c, taps, h, w)
    out = torch.einsum("nckhw,nkshw->ncshw", patches, kernels)
    return F.pixel_shuffle(out.reshape(n, c * scale * scale, h, w), scale)


class CARAFE(nn.Module):
    """Content-aware reassembly of features (x ``scale``), then a 1x1 conv to ``out_channels``.

    Kernel prediction: 1x1 conv to ``compressed_channels``, a ``k_encoder`` x ``k_encoder`` conv to
    ``scale**2 * k_up**2`` channels (channel t * scale**2 + s: tap t for sub-pixel s, the order the authors'
    ``pixel_shuffle`` implies), softmax over the taps. The softmax makes every kernel a weighted mean of the
    neighbourhood, so the upsampling cannot change the feature scale.
    """

    def __init__(self, in_channels: int, out_channels: int, k_encoder: int = 3, scale: int = 2, k_up: int = 5,
                 compressed_channels: int = 64) -> None:
        super().__init__()
        if k_up % 2 != 1 or k_encoder % 2 != 1 or scale < 1:
            raise ValueError("k_up and k_encoder must be odd and scale >= 1")
        self.k_up, self.scale = k_up, scale
        self.down = nn.Conv2d(in_channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(compressed_channels, scale * scale * k_up * k_up, k_encoder, padding=k_encoder // 2)
        self.out = nn.Conv2d(in_channels, out_channels, 1)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """Reassembly kernels (N, k_up**2, scale**2, H, W), each summing to 1 over its taps."""
        n, _, h, w = x.shape
        logits = self.encoder(self.down(x)).view(n, self.k_up * self.k_up, self.scale * self.scale, h, w)
        return logits.softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(carafe_reassemble(x, self.kernels(x), self.k_up, self.scale))


@register_model("cares_unet")
class CAResUNet(nn.Module):
    """Five residual levels (widths 1, 2, 4, 8, 16 x ``base_width``), strided-conv downsampling, CARAFE upsampling.

    ``base_width=64`` is the authors' network (64 ... 1024); the 64 compressed channels of every CARAFE do not
    scale with it. The authors' input is one 256 x 256 slice, 8-bit grey / 255.
    """

    #: input height and width must be multiples of this: four stride-2 convs, and each upsampled map meets a skip
    size_multiple = 16
    spatial_dims = 2

    def __init__(self, in_channels: int = 1, out_channels: int = 2, base_width: int = 64,
                 unused_shortcuts: bool = True, compressed_channels: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or base_width < 1 or compressed_channels < 1:
            raise ValueError("in_channels, out_channels, base_width and compressed_channels must be >= 1")
        self.in_channels, self.out_channels, self.base_width = in_channels, out_channels, base_width
        f = [base_width * m for m in (1, 2, 4, 8, 16)]
        u = unused_shortcuts

        def down(c: int) -> nn.Sequential:
            return nn.Sequential(BasicConv2d(c, c, 3, stride=2, padding=1), ResBlock(c, c, u))

        def up(c_in: int, c_out: int) -> CARAFE:
            return CARAFE(c_in, c_out, compressed_channels=compressed_channels)

        self.encoder1 = ConvBlock(in_channels, f[0], u)
        self.down1 = down(f[0])
        self.encoder2 = ConvBlock(f[0], f[1], u)
        self.down2 = down(f[1])
        self.encoder3 = ConvBlock(f[1], f[2], u)
        self.down3 = down(f[2])
        self.encoder4 = ConvBlock(f[2], f[3], u)
        self.down4 = down(f[3])
        self.decoder5 = ConvBlock(f[3], f[4], u)  # the bottleneck; the authors name it a decoder
        self.up1 = up(f[4], f[3])
        self.decoder6 = ConvBlock(f[4], f[3], u)
        self.up2 = up(f[3], f[2])
        self.decoder7 = ConvBlock(f[3], f[2], u)
        self.up3 = up(f[2], f[1])
        self.decoder8 = ConvBlock(f[2], f[1], u)
        self.up4 = up(f[1], f[0])
        self.conv = ConvBlock(f[1], f[0], u)
        self.classfier = nn.Conv2d(f[0], out_channels, 1)  # sic: the authors' spelling, kept for their checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x in_channels x H x W (H, W multiples of 16) -> N x out_channels logits, same size."""
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"height and width must be multiples of {self.size_multiple}, not {tuple(x.shape[-2:])}")
        x1 = self.encoder1(x)
        x2 = self.encoder2(self.down1(x1))
        x3 = self.encoder3(self.down2(x2))
        x4 = self.encoder4(self.down3(x3))
        y = self.decoder5(self.down4(x4))
        y = self.decoder6(torch.cat((x4, self.up1(y)), dim=1))
        y = self.decoder7(torch.cat((x3, self.up2(y)), dim=1))
        y = self.decoder8(torch.cat((x2, self.up3(y)), dim=1))
        y = self.conv(torch.cat((x1, self.up4(y)), dim=1))
        return self.classfier(y)
