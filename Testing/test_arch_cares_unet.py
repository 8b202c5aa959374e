"""CARes-UNet has the authors' size and state-dict names, returns logits, and its CARAFE reassembles as specified."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import LiverTumorSegLib.models.cares_unet  # noqa: F401  (registers "cares_unet")
from LiverTumorSegLib.models import build_model, input_contract
from LiverTumorSegLib.models.cares_unet import CARAFE, CAResUNet, carafe_reassemble

#: 13 residual blocks, each with a 1x1 shortcut conv (C*C) and its BN (2C) that the forward never uses
UNUSED_SHORTCUT_PARAMETERS = 2_100_864


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _full_size(**kwargs) -> CAResUNet:
    """The authors' configuration on the meta device: shapes and names only, no memory or initialisation cost."""
    with torch.device("meta"):
        return CAResUNet(in_channels=1, out_channels=2, base_width=64, **kwargs)


def test_parameter_count_matches_the_authors_model():
    assert _count(_full_size()) == 56_518_418
    assert _count(_full_size(unused_shortcuts=False)) == 54_417_554 == 56_518_418 - UNUSED_SHORTCUT_PARAMETERS


def test_state_dict_has_the_authors_names_and_shapes():
    """Their checkpoint is a plain state_dict of ``CARes_Unet`` (338 entries), loaded with strict=True."""
    sd = _full_size().state_dict()
    assert len(sd) == 338
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["encoder1.bconv.conv.weight"] == (64, 1, 3, 3)
    assert shapes["encoder1.resnet.inc.3.weight"] == (64, 64, 3, 3)
    assert shapes["down4.0.conv.weight"] == (512, 512, 3, 3)
    assert shapes["down4.1.conv1x1.0.weight"] == (512, 512, 1, 1)
    assert shapes["decoder5.resnet.conv1x1.1.running_var"] == (1024,)
    assert shapes["up1.down.weight"] == (64, 1024, 1, 1)
    assert shapes["up1.encoder.weight"] == (100, 64, 3, 3)
    assert shapes["up1.out.weight"] == (512, 1024, 1, 1)
    assert shapes["up4.out.bias"] == (64,)
    assert shapes["conv.bconv.conv.weight"] == (64, 128, 3, 3)
    assert shapes["classfier.weight"] == (2, 64, 1, 1)
    lean = _full_size(unused_shortcuts=False).state_dict()
    assert not any(".conv1x1." in k for k in lean) and len(lean) == 338 - 13 * 6


def test_unused_shortcuts_do_not_change_the_output():
    torch.manual_seed(0)
    full = CAResUNet(base_width=4).eval()
    lean = CAResUNet(base_width=4, unused_shortcuts=False).eval()
    missing, unexpected = lean.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(".conv1x1." in k for k in unexpected)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(full(x), lean(x))


def test_tiny_forward_keeps_the_size_and_returns_logits():
    torch.manual_seed(0)
    net = CAResUNet(in_channels=1, out_channels=2, base_width=4).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, 32, 32))
    assert y.shape == (1, 2, 32, 32)
    assert torch.isfinite(y).all() and (y < 0).any()  # no sigmoid inside: logits may be negative


def test_tiny_backward_reaches_every_used_weight():
    torch.manual_seed(0)
    net = CAResUNet(base_width=2, unused_shortcuts=False, compressed_channels=4)
    net(torch.randn(2, 1, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(ValueError):
        CAResUNet(base_width=2)(torch.zeros(1, 1, 24, 32))


def test_carafe_with_a_uniform_kernel_is_nearest_upsampling_of_the_zero_padded_5x5_mean():
    torch.manual_seed(0)
    up = CARAFE(3, 3)
    with torch.no_grad():
        up.encoder.weight.zero_()
        up.encoder.bias.zero_()  # equal logits -> softmax 1/25 on every tap
        up.out.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        up.out.bias.zero_()
        x = torch.randn(2, 3, 6, 7)
        y = up(x)
    mean = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True)
    expected = F.interpolate(mean, scale_factor=2, mode="nearest")
    assert y.shape == (2, 3, 12, 14)
    torch.testing.assert_close(y, expected)


def test_carafe_reassembly_follows_the_written_formula():
    """out[c, 2i+a, 2j+b] = sum_t K[t, (a, b), i, j] * x_pad[c, i + dy, j + dx], t = 5 dy + dx, pad 2 (zeros)."""
    torch.manual_seed(0)
    n, c, h, w = 1, 2, 3, 4
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    k = torch.rand(n, 25, 4, h, w, dtype=torch.float64)
    xp = F.pad(x, (2, 2, 2, 2))
    expected = torch.zeros(n, c, 2 * h, 2 * w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            for a in range(2):
                for b in range(2):
                    for t in range(25):
                        dy, dx = divmod(t, 5)
                        expected[:, :, 2 * i + a, 2 * j + b] += k[:, t, 2 * a + b, i, j] * xp[:, :, i + dy, j + dx]
    torch.testing.assert_close(carafe_reassemble(x, k, 5, 2), expected)


def test_carafe_encoder_channels_are_tap_major_as_in_the_authors_pixel_shuffle():
    """Encoder channel t * 4 + s is tap t for sub-pixel s: a dominant bias picks one neighbour per sub-pixel."""
    up = CARAFE(1, 1, compressed_channels=2)
    chosen = {0: 12, 1: 13, 2: 17, 3: 18}  # sub-pixel (a, b) -> tap (dy, dx) = (2 + a, 2 + b), i.e. x[i + a, j + b]
    with torch.no_grad():
        up.encoder.weight.zero_()
        up.encoder.bias.zero_()
        for s, t in chosen.items():
            up.encoder.bias[t * 4 + s] = 60.0
        up.out.weight.fill_(1.0)
        up.out.bias.zero_()
        x = torch.arange(1.0, 13.0).view(1, 1, 3, 4)
        y = up(x)[0, 0]
    xp = F.pad(x[0, 0], (0, 1, 0, 1))  # neighbours beyond the border are zero padding
    for a in range(2):
        for b in range(2):
            torch.testing.assert_close(y[a::2, b::2], xp[a:a + 3, b:b + 4])


def test_built_by_name_with_its_input_contract():
    net = build_model("cares_unet", in_channels=1, out_channels=2, base_width=4)
    assert isinstance(net, CAResUNet)
    assert input_contract(net) == {"size_multiple": 16, "spatial_dims": 2, "in_channels": 1}
    assert input_contract(build_model("cares_unet", in_channels=3, base_width=2))["in_channels"] == 3
