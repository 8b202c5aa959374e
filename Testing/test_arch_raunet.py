"""RA-UNet-I/II match the authors' Keras networks in size and cost, and run on the sizes their contract promises.

Full-size networks are only built (and run on the meta device, which computes shapes but no numbers); real
forward passes use filter_num 1 on the smallest admissible inputs, so this file stays cheap on a shared CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import LiverTumorSegLib.models.raunet  # noqa: F401  (registers raunet_2d / raunet_3d)
from LiverTumorSegLib.models import build_model, input_contract, model_names
from LiverTumorSegLib.models.raunet import PreActBottleneck, ResidualAttention
from LiverTumorSegLib.models.registry import accepted_arguments

# Keras trainable counts; the totals add BN moving mean/variance, which PyTorch keeps as buffers (seeds.md 3.1).
AUTHORS = {"raunet_2d": (737_897, 747_321), "raunet_3d": (4_420_849, 4_439_697)}


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: extra threads only add contention on a shared machine (15 s -> 0.2 s per tiny pass)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_parameter_counts_at_the_authors_configuration(name):
    net = build_model(name, in_channels=1, out_channels=1)
    trainable, keras_total = AUTHORS[name]
    assert n_params(net) == trainable
    moving = sum(b.numel() for k, b in net.named_buffers() if k.endswith(("running_mean", "running_var")))
    assert n_params(net) + moving == keras_total


@pytest.mark.parametrize("name,size,gmacs", [("raunet_2d", (256, 256), 0.6397),
                                             ("raunet_3d", (32, 224, 224), 101.13),
                                             ("raunet_3d", (64, 64, 64), 16.51)])
def test_conv_cost_matches_the_reference_port(name, size, gmacs):
    """Same MACs as the reference measurement means every conv runs at the authors' resolution and width."""
    net = build_model(name).to("meta").eval()
    with FlopCounterMode(display=False) as counter:
        y = net(torch.empty(1, 1, *size, device="meta"))
    assert tuple(y.shape) == (1, 1, *size)
    assert counter.get_total_flops() / 2e9 == pytest.approx(gmacs, rel=1e-3)


def test_keras_conventions():
    net = build_model("raunet_2d", filter_num=1)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None and not m.bias.any() for m in convs)
    blocks = [m for m in net.modules() if isinstance(m, PreActBottleneck)]
    assert all(isinstance(b.shortcut, nn.Conv2d) for b in blocks)  # projection even when widths are equal
    assert [a.depth for a in net.attention] == [4, 3, 2, 1]
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())  # logits out; the pipeline applies sigmoid


def test_registered_with_their_contracts():
    assert {"raunet_2d", "raunet_3d"} <= set(model_names())
    assert input_contract(build_model("raunet_2d", filter_num=1, in_channels=3)) == {
        "size_multiple": 32, "spatial_dims": 2, "in_channels": 3}
    assert input_contract(build_model("raunet_3d", filter_num=1)) == {
        "size_multiple": 32, "spatial_dims": 3, "in_channels": 1}
    for name in ("raunet_2d", "raunet_3d"):
        assert accepted_arguments(name) == {"in_channels", "out_channels", "filter_num", "norm_momentum"}
    assert build_model("raunet_2d").filter_num == 4 and build_model("raunet_3d", filter_num=1).filter_num == 1


@pytest.mark.parametrize("shape", [(32, 32), (32, 96)])
def test_tiny_2d_forward_backward(shape):
    torch.manual_seed(0)
    net = build_model("raunet_2d", in_channels=3, out_channels=2, filter_num=1)
    x = torch.randn(2, 3, *shape)
    y = net(x)
    assert y.shape == (2, 2, *shape) and torch.isfinite(y).all()
    y.square().mean().backward()
    # every weight, including the deepest mask branch (1/32 of the input), takes part in the output; biases of
    # convs that feed a BN get exactly zero gradient in training (BN removes them), in Keras as here
    grads = {k: p.grad for k, p in net.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for k, g in grads.items() if not k.endswith("bias"))
    assert all(grads[k].abs().sum() > 0 for k in ("attention.0.mask_head.1.bias", "head.bias"))
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 2, *shape)


def test_tiny_3d_forward():
    torch.manual_seed(0)
    net = build_model("raunet_3d", in_channels=1, out_channels=1, filter_num=1).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 32, 32, 64))
    assert y.shape == (1, 1, 32, 32, 64) and torch.isfinite(y).all()


@pytest.mark.parametrize("name,shape", [("raunet_2d", (1, 1, 48, 64)), ("raunet_2d", (1, 1, 16, 16)),
                                        ("raunet_3d", (1, 1, 32, 32, 48)), ("raunet_3d", (1, 1, 32, 32))])
def test_sizes_outside_the_contract_are_refused(name, shape):
    net = build_model(name, filter_num=1).eval()
    with pytest.raises(ValueError):
        net(torch.zeros(shape))


def test_why_16_is_not_enough():
    """48 is a multiple of 16, but r4 would be 3 wide: pooled (ceil) to 2, upsampled to 4 != 3, as in Keras."""
    module = ResidualAttention(4, depth=1, spatial_dims=2).eval()
    with torch.no_grad():
        assert module(torch.randn(1, 4, 2, 2)).shape == (1, 4, 2, 2)
        with pytest.raises(RuntimeError):
            module(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("name", ["raunet_2d", "raunet_3d", "resunet"])
def test_norm_momentum_reaches_every_batch_norm_and_is_checked(name):
    width = {"base_width": 2} if name == "resunet" else {"filter_num": 1}
    net = build_model(name, norm_momentum=0.1, **width)
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == 0.1 and m.eps == 1e-3 for m in norms)
    with pytest.raises(ValueError, match="norm_momentum"):
        build_model(name, norm_momentum=0.0, **width)
