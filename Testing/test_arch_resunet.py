"""The ResUNet port has the authors' Keras network's size and wiring, and runs in 2-D and 3-D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import LiverTumorSegLib.models.resunet  # noqa: F401  (registers "resunet")
from LiverTumorSegLib.models import build_model, input_contract
from LiverTumorSegLib.models.resunet import ResUNet, SameConv


def test_parameter_count_matches_the_authors_keras_summary():
    """4,715,761 trainable (Keras summary); the 7,296 non-trainable ones are the BN running statistics."""
    net = ResUNet(in_channels=3, out_channels=1)
    assert sum(p.numel() for p in net.parameters()) == 4_715_761
    running = sum(b.numel() for name, b in net.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert running == 7_296


def test_batch_norm_and_bias_follow_keras_defaults():
    net = ResUNet(base_width=4)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    assert convs and all(m.bias is not None and not m.bias.any() for m in convs)


def test_tiny_2d_forward_keeps_the_size_and_returns_logits():
    torch.manual_seed(0)
    net = ResUNet(in_channels=1, out_channels=1, base_width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32)
    assert torch.isfinite(y).all() and (y < 0).any()  # no sigmoid inside: logits may be negative


def test_tiny_3d_forward():
    torch.manual_seed(0)
    net = ResUNet(in_channels=1, out_channels=1, base_width=4, spatial_dims=3).eval()
    assert any(isinstance(m, nn.Conv3d) for m in net.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    with torch.no_grad():
        y = net(torch.randn(1, 1, 16, 32, 32))
    assert y.shape == (1, 1, 16, 32, 32)


def test_built_by_name_with_its_input_contract():
    net = build_model("resunet", in_channels=3, out_channels=1, base_width=4, spatial_dims=2)
    assert isinstance(net, ResUNet)
    assert input_contract(net) == {"size_multiple": 16, "spatial_dims": 2, "in_channels": 3}
    assert input_contract(build_model("resunet", in_channels=1, base_width=4, spatial_dims=3))["spatial_dims"] == 3


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_strided_conv_samples_tensorflows_same_grid(spatial_dims):
    """TF 'same' pads an even axis only after for stride 2: a centre-tap kernel reads x[2i + 1], not x[2i]."""
    conv = SameConv(1, 1, 3, stride=2, spatial_dims=spatial_dims)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[(0, 0) + (1,) * spatial_dims] = 1.0
        conv.conv.bias.zero_()
        x = torch.arange(8.0 ** spatial_dims).reshape((1, 1) + (8,) * spatial_dims)
        y = conv(x)
    expected = x[(...,) + (slice(1, None, 2),) * spatial_dims]
    assert y.shape == expected.shape and torch.equal(y, expected)


def test_rejects_unsupported_dimensions():
    with pytest.raises(ValueError):
        ResUNet(spatial_dims=1)
