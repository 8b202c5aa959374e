"""Building blocks shared by the REC-UNet variants.

Attribute names and ``nn.Sequential`` indices are the authors' (459806555/REC-UNet), because their
released checkpoints must load with ``strict=True``; do not rename them.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicConv(nn.Module):
    """Conv (no bias) -> BN (momentum 0.01, the authors' value inside the attention gates) -> optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.01, affine=True)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x


class SpatialGate(nn.Module):
    """One triplet-attention branch: gate x by a 7x7 conv over (max, mean) pooled along ``dim``.

    The authors permute x so that the pooled axis becomes the channel axis, pool, and permute back,
    which copies the whole feature map twice per branch. Pooling along ``dim`` directly and moving
    only the small 2-channel descriptor gives the same numbers without those copies.
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError("dim must be 1 (channels), 2 (height) or 3 (width)")
        self.dim = dim
        self.spatial = BasicConv(2, 1, 7, padding=3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dim
        pooled = torch.stack((x.amax(dim=d), x.mean(dim=d)), dim=1)  # N,2,<two remaining axes>
        if d == 3:  # authors' permute(0, 3, 2, 1): remaining axes appear as (H, C)
            pooled = pooled.transpose(2, 3)
        scale = torch.sigmoid(self.spatial(pooled))  # N,1,a,b
        if d == 1:
            return x * scale
        if d == 2:  # a,b = C,W  ->  N,C,1,W
            return x * scale.permute(0, 2, 1, 3)
        return x * scale.permute(0, 3, 2, 1)  # a,b = H,C  ->  N,C,H,1


class TripletAttention(nn.Module):
    """Triplet attention (Misra et al. 2021), the authors' ``EM_block``: mean of three gated copies."""

    def __init__(self) -> None:
        super().__init__()
        self.ChannelGateH = SpatialGate(dim=2)
        self.ChannelGateW = SpatialGate(dim=3)
        self.SpatialGate = SpatialGate(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.SpatialGate(x) + self.ChannelGateH(x) + self.ChannelGateW(x)) * (1.0 / 3.0)


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """Conv2d or Conv3d: blocks are written once for 2-D slice networks and 3-D patch networks."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def batch_norm_nd(spatial_dims: int) -> type[nn.Module]:
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


def set_batch_norm_momentum(module: nn.Module, momentum: float) -> None:
    """Keras ports keep Keras' slow running statistics (PyTorch momentum 0.01) by default; short schedules (a few
    hundred steps) leave those statistics far from the batch ones, so evaluation-mode output lags what training
    reached. A faster momentum fixes that without touching the weights' meaning."""
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"norm_momentum must be in (0, 1], not {momentum}")
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


def conv_bn_relu(in_channels: int, out_channels: int, spatial_dims: int = 2) -> list[nn.Module]:
    return [conv_nd(spatial_dims)(in_channels, out_channels, 3, padding=1, bias=True),
            batch_norm_nd(spatial_dims)(out_channels), nn.ReLU(inplace=True)]


class UpConv(nn.Module):
    """Nearest-neighbour x2 upsampling then a 3x3 conv (the authors' ``up_conv``)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                *conv_bn_relu(in_channels, out_channels, spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class CalibrationGate(nn.Module):
    """The authors' ``CM_block`` (an Attention-U-Net gate) returning ``cat(skip * psi, decoder)``."""

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv, bn = conv_nd(spatial_dims), batch_norm_nd(spatial_dims)
        # The authors declare W_g with F_l inputs and W_x with F_g inputs; equal everywhere in the network.
        self.W_g = nn.Sequential(conv(skip_channels, inter_channels, 1, bias=True), bn(inter_channels))
        self.W_x = nn.Sequential(conv(gate_channels, inter_channels, 1, bias=True), bn(inter_channels))
        self.psi = nn.Sequential(conv(inter_channels, 1, 1, bias=True), bn(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        psi = self.psi(self.relu(self.W_g(g) + self.W_x(x)))
        return torch.cat((x * psi, g), dim=1)
