"""RA-UNet (Jin et al., Front. Bioeng. Biotechnol. 2020; RanSuLab/RAUNet-tumor-segmentation ``build_model.py``).

RA-UNet-I (``raunet_2d``, filter_num 4, 256x256 slices) finds the liver box; RA-UNet-II (``raunet_3d``,
filter_num 8, 224x224x32 liver slabs and 64^3 tumour patches) segments inside it. Both are one U-Net of
pre-activation bottleneck residual blocks whose skips pass through residual attention modules; this file builds
both from one implementation so that the 2-D and 3-D networks cannot drift apart.

Ported from the authors' Keras (TF1) code, keeping what changes the numbers:

* Residual block = full pre-activation bottleneck, BN-ReLU-conv1 (C/4), BN-ReLU-conv3 (C/4), BN-ReLU-conv1 (C).
  The authors' shortcut test compares the bottleneck width C/4 with C, so it is always true: every block has a
  biased 1x1 projection shortcut on its raw input, with no BN, even where the input already has C channels.
  Keeping it is what reproduces the published parameter counts (737,897 in 2-D, 4,420,849 in 3-D).
* Convolutions keep Keras' defaults: bias on, 'same' padding, Glorot-uniform weights and zero biases (the
  initialisation is part of how the authors' networks train). BN uses Keras' momentum 0.99 = PyTorch 0.01 and
  eps 1e-3 (``norm_momentum`` changes the momentum for short schedules).
* Residual attention module (Wang et al. 2017, p=1, t=2, r=1), as in seeds.md 3.1: one residual block, then a
  trunk of two blocks and a soft-mask encoder-decoder of ``depth`` poolings. Mask encoder: pool, block; then
  ``depth - 1`` times: a skip block taken *before* pooling, pool, block. Mask decoder, deepest first: block, x2
  upsample, add the skip of that size (``depth - 1`` times); then block, x2 upsample back to the trunk's size.
  Two biased 1x1 convs (C channels, nothing between) and a sigmoid give M; the module returns
  ``block((1 + M) * T)``. Depth 1 on the deepest skip (r4) ... depth 4 on the shallowest (r1), so every mask
  branch reaches 1/32 of the network input.
* Skip handling: the decoder concatenates ``[upsampled, attended skip]`` in that order (channel order matters for
  weight import); the last level concatenates ``[upsampled, stem]`` without attention, then conv3-BN-ReLU and a
  3x3 (not 1x1) head conv.
* Pooling: body max-pools are Keras' default 'valid' (floor); mask-branch pools are 'same' (ceil). Upsampling is
  nearest x2.
* The forward returns logits; the authors end in a sigmoid on one output channel, which the pipeline applies
  (``output_activation`` in the model file), so train these with ``sigmoid``.

Input sizes (``size_multiple`` = 32 for both, per axis; in 3-D every axis, depth included): the body pools four
times, which alone asks for 16, but the attention module on the skip at 1/2^k of the input pools 5-k more times,
so every mask branch reaches 1/32, and its upsampled path must land back exactly on the skips and trunk it is
added to or multiplied with. A x2 upsample restores a pooled size only if that size was even, so 1/2, 1/4, 1/8 and
1/16 of the input must all be even, i.e. the input a multiple of 32. A multiple of 16 that is not one of 32
(e.g. 48) breaks the depth-1 module on r4 (3 -> 2 -> 4), in Keras as here. The authors' sizes (256, 224, 128, 64,
32) are all multiples of 32. Other sizes are rejected with a clear error rather than silently padded or cropped:
padding is the pipeline's job.

The width argument is ``filter_num`` (the authors' name), not ``base_width``: the trainer fills ``base_width``
from its generic ``--width`` default, which would silently replace the authors' filter_num; change it with
``--arch-arg filter_num=N``. Widths are 4, 4, 8, 16, 32, 64 times filter_num (stem, r1 ... r5).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import batch_norm_nd, conv_nd, max_pool_nd, set_batch_norm_momentum
from .registry import register_model


def _keras_bn(channels: int, spatial_dims: int) -> nn.Module:
    """Keras BatchNormalization defaults (momentum 0.99 on the old value, eps 1e-3) in PyTorch's convention."""
    return batch_norm_nd(spatial_dims)(channels, eps=1e-3, momentum=0.01)


class PreActBottleneck(nn.Module):
    """The authors' ``residual_block``: pre-activation bottleneck with an always-on biased projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        mid = out_channels // 4
        if mid < 1:
            raise ValueError(f"a bottleneck block needs at least 4 output channels, not {out_channels}")
        self.residual = nn.Sequential(
            _keras_bn(in_channels, spatial_dims), nn.ReLU(inplace=True), conv(in_channels, mid, 1),
            _keras_bn(mid, spatial_dims), nn.ReLU(inplace=True), conv(mid, mid, 3, padding=1),
            _keras_bn(mid, spatial_dims), nn.ReLU(inplace=True), conv(mid, out_channels, 1))
        self.shortcut = conv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class ResidualAttention(nn.Module):
    """Residual attention module: the trunk is re-weighted by ``1 + M`` so a poor mask can never erase features."""

    def __init__(self, channels: int, depth: int, spatial_dims: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"attention depth must be >= 1, not {depth}")
        conv = conv_nd(spatial_dims)

        def block() -> PreActBottleneck:
            return PreActBottleneck(channels, channels, spatial_dims)

        self.depth = depth
        self.first = block()
        self.trunk = nn.Sequential(block(), block())
        # 'same' pooling in Keras: a trailing odd row is pooled on its own (ceil), never dropped.
        self.pool = max_pool_nd(spatial_dims)(kernel_size=2, stride=2, ceil_mode=True)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.down = nn.ModuleList(block() for _ in range(depth))        # after each pooling
        self.skips = nn.ModuleList(block() for _ in range(depth - 1))   # taken before pooling levels 2..depth
        self.ups = nn.ModuleList(block() for _ in range(depth))         # before each upsample, deepest first
        self.mask_head = nn.Sequential(conv(channels, channels, 1), conv(channels, channels, 1))
        self.last = block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        trunk = self.trunk(x)
        m = self.down[0](self.pool(x))
        skips = []
        for skip, down in zip(self.skips, self.down[1:]):
            skips.append(skip(m))
            m = down(self.pool(m))
        for up, s in zip(self.ups[:-1], reversed(skips)):
            m = self.up(up(m)) + s
        m = self.up(self.ups[-1](m))
        mask = torch.sigmoid(self.mask_head(m))
        return self.last((1.0 + mask) * trunk)


class RAUNet(nn.Module):
    """RA-UNet body in 2-D or 3-D; use the registered ``raunet_2d`` / ``raunet_3d`` for the authors' defaults."""

    #: four body poolings plus the mask branches reaching 1/32 of the input; see the module docstring
    size_multiple = 32

    def __init__(self, in_channels: int = 1, out_channels: int = 1, filter_num: int = 4, spatial_dims: int = 2,
                 norm_momentum: float = 0.01) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or filter_num < 1:
            raise ValueError("in_channels, out_channels and filter_num must be >= 1")
        conv = conv_nd(spatial_dims)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.filter_num, self.spatial_dims = filter_num, spatial_dims
        w = [4 * filter_num * 2 ** i for i in range(5)]  # r1..r4 widths, then r5; the stem has w[0]
        self.stem = nn.Sequential(conv(in_channels, w[0], 3, padding=1), _keras_bn(w[0], spatial_dims),
                                  nn.ReLU(inplace=True))
        self.pool = max_pool_nd(spatial_dims)(kernel_size=2, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.encoder = nn.ModuleList(PreActBottleneck(a, b, spatial_dims) for a, b in zip(w[:1] + w[:3], w[:4]))
        self.bottom = nn.Sequential(PreActBottleneck(w[3], w[4], spatial_dims),
                                    PreActBottleneck(w[4], w[4], spatial_dims))
        # level i: attention of depth 4 - i on skip r_{i+1}; decoder block merges [up from below, attended skip]
        self.attention = nn.ModuleList(ResidualAttention(w[i], 4 - i, spatial_dims) for i in range(4))
        self.decoder = nn.ModuleList(PreActBottleneck(w[i + 1] + w[i], w[i], spatial_dims) for i in range(4))
        self.merge = nn.Sequential(conv(2 * w[0], w[0], 3, padding=1), _keras_bn(w[0], spatial_dims),
                                   nn.ReLU(inplace=True))
        self.head = conv(w[0], out_channels, 3, padding=1)
        self.apply(_keras_init)
        set_batch_norm_momentum(self, norm_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x in_channels x spatial (each a multiple of 32) -> N x out_channels logits of the same size."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}-D batch, got shape {tuple(x.shape)}")
        if any(s % self.size_multiple for s in x.shape[2:]):
            raise ValueError(f"RA-UNet needs spatial sizes that are multiples of {self.size_multiple}, got "
                             f"{tuple(x.shape[2:])}")
        stem = self.stem(x)
        skips = []
        y = stem
        for block in self.encoder:
            y = block(self.pool(y))
            skips.append(y)
        y = self.bottom(self.pool(y))
        for i in reversed(range(4)):
            y = self.decoder[i](torch.cat((self.up(y), self.attention[i](skips[i])), dim=1))
        y = self.merge(torch.cat((self.up(y), stem), dim=1))
        return self.head(y)


def _keras_init(module: nn.Module) -> None:
    """Glorot-uniform kernels and zero biases, Keras' defaults (PyTorch's Kaiming default trains differently)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_model("raunet_2d")
class RAUNet2D(RAUNet):
    """RA-UNet-I: the 2-D liver localiser (authors: filter_num 4, 256x256x1 slices, one sigmoid channel)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, filter_num: int = 4,
                 norm_momentum: float = 0.01) -> None:
        super().__init__(in_channels, out_channels, filter_num, spatial_dims=2, norm_momentum=norm_momentum)


@register_model("raunet_3d")
class RAUNet3D(RAUNet):
    """RA-UNet-II: the 3-D liver and tumour network (authors: filter_num 8, 224x224x32 and 64^3 patches)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, filter_num: int = 8,
                 norm_momentum: float = 0.01) -> None:
        super().__init__(in_channels, out_channels, filter_num, spatial_dims=3, norm_momentum=norm_momentum)
