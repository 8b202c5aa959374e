"""REC-UNet reproduces the authors' module tree exactly and computes what their code computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from LiverTumorSegLib.authors import strip_data_parallel_prefix
from LiverTumorSegLib.models import build_model, model_names
from LiverTumorSegLib.models.blocks import TripletAttention

KEYS_FILE = Path(__file__).parent / "data" / "rec_unet_authors_state_dict.txt"


def authors_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The authors' checkpoint layout (DataParallel keys, shapes) filled with seeded random values."""
    section, keys = None, {}
    for line in KEYS_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("# REC_UNet_EM"):
            section = "rec_unet_em"
        elif line.startswith("# REC_UNet "):
            section = "rec_unet"
        elif line.startswith("module.") and section == variant:
            name, shape = line.split(" ", 1)
            keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked")
                else torch.rand(s, generator=g) + 0.5) for k, s in keys.items()}


@pytest.mark.parametrize("variant", ["rec_unet", "rec_unet_em"])
def test_authors_checkpoint_loads_strictly(variant):
    state = authors_state_dict(variant)
    assert len(state) == 402 and all(k.startswith("module.") for k in state)
    model = build_model(variant, in_channels=1, out_channels=2, base_width=64)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in strip_data_parallel_prefix(state).items()}
    assert ours == theirs
    model.load_state_dict(strip_data_parallel_prefix(state), strict=True)
    assert sum(p.numel() for p in model.parameters()) == 34_880_186
    n_bn_gate = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.momentum == 0.01)
    assert n_bn_gate == 3 * 9  # one 1-channel BN per triplet-attention branch, nine blocks


def test_the_other_variants_keys_do_not_load():
    model = build_model("rec_unet", base_width=64)
    with pytest.raises(RuntimeError):
        model.load_state_dict(strip_data_parallel_prefix(authors_state_dict("rec_unet_em")), strict=True)


@pytest.mark.parametrize("variant", ["rec_unet", "rec_unet_em"])
@pytest.mark.parametrize("in_channels,out_channels,width", [(1, 2, 8), (5, 3, 4)])
def test_forward_shapes(variant, in_channels, out_channels, width):
    model = build_model(variant, in_channels=in_channels, out_channels=out_channels, base_width=width).eval()
    with torch.no_grad():
        y = model(torch.randn(2, in_channels, 48, 80))
    assert y.shape == (2, out_channels, 48, 80)
    assert torch.isfinite(y).all()


def test_width_scales_parameters_quadratically():
    n = {w: sum(p.numel() for p in build_model("rec_unet", base_width=w).parameters()) for w in (16, 32, 64)}
    assert n[64] == 34_880_186
    assert 3.9 < n[64] / n[32] < 4.1 and 3.9 < n[32] / n[16] < 4.1


def test_registry_knows_both_and_rejects_unknown():
    assert {"rec_unet", "rec_unet_em"} <= set(model_names())
    with pytest.raises(KeyError, match="unknown architecture"):
        build_model("no_such_net")


class _AuthorsZPoolGate(nn.Module):
    """The authors' permute-based branch, written independently, to check our copy-free version."""

    def __init__(self, gate: nn.Module, perm: tuple[int, ...] | None):
        super().__init__()
        self.gate, self.perm = gate, perm

    def forward(self, x):
        y = x.permute(*self.perm).contiguous() if self.perm else x
        pooled = torch.cat((torch.max(y, 1)[0].unsqueeze(1), torch.mean(y, 1).unsqueeze(1)), dim=1)
        out = y * torch.sigmoid(self.gate.spatial(pooled))
        return out.permute(*self.perm) if self.perm else out


def test_triplet_attention_equals_authors_permute_formulation():
    torch.manual_seed(0)
    att = TripletAttention()
    for m in att.modules():  # non-trivial BN statistics so every path matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    att.eval()
    x = torch.randn(2, 6, 20, 28)  # C, H, W all different, so any axis mix-up changes the result
    h = _AuthorsZPoolGate(att.ChannelGateH, (0, 2, 1, 3))
    w = _AuthorsZPoolGate(att.ChannelGateW, (0, 3, 2, 1))
    s = _AuthorsZPoolGate(att.SpatialGate, None)
    with torch.no_grad():
        expected = 1 / 3 * (s(x) + h(x) + w(x))
        torch.testing.assert_close(att(x), expected, rtol=1e-5, atol=1e-6)
