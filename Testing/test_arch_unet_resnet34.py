"""unet_resnet34 is the notebook's fastai DynamicUnet(resnet34) and takes an ImageNet ResNet-34 file as is."""

from __future__ import annotations

import pytest
import torch

import LiverTumorSegLib.models.unet_resnet34  # noqa: F401  (registers the architecture)
from LiverTumorSegLib.models import build_model
from LiverTumorSegLib.models.registry import accepted_arguments, input_contract
from LiverTumorSegLib.models.unet_resnet34 import ResNet34Encoder, UNetResNet34


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_resnet34_keys() -> list[str]:
    """torchvision's ResNet-34 state-dict keys, written out from its layout rather than read from our module."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for stage, n in enumerate((3, 4, 6, 3), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}."
            keys += [p + "conv1.weight"] + [p + f"bn1.{s}" for s in bn]
            keys += [p + "conv2.weight"] + [p + f"bn2.{s}" for s in bn]
            if b == 0 and stage > 1:
                keys += [p + "downsample.0.weight"] + [p + f"downsample.1.{s}" for s in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.fixture(scope="module")
def model() -> UNetResNet34:
    torch.manual_seed(0)
    return UNetResNet34(in_channels=1, out_channels=2).eval()


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A stand-in for torchvision's ImageNet file: 3-channel stem, random values everywhere, an ``fc`` head and,
    like the released files, no ``num_batches_tracked`` entries."""
    g = torch.Generator().manual_seed(1)
    state = {k: torch.rand(v.shape, generator=g) + 0.5 for k, v in ResNet34Encoder(in_channels=3).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    path = tmp_path_factory.mktemp("weights") / "resnet34-imagenet.pth"
    torch.save(state, path)
    return str(path), state


def test_parameter_counts_match_the_notebooks_model(model):
    assert n_params(model) == 41_207_832
    assert n_params(model.encoder) == 21_278_400
    assert n_params(model) - n_params(model.encoder) == 19_929_432


def test_encoder_uses_torchvision_key_names(model):
    expected = [k for k in torchvision_resnet34_keys() if not k.startswith("fc.")]
    assert list(model.encoder.state_dict()) == expected
    assert len(expected) == 216
    assert tuple(model.encoder.state_dict()["conv1.weight"].shape) == (64, 1, 7, 7)


def test_decoder_layout_follows_the_printed_model(model):
    widths = [(b.shuf[0][0].in_channels, b.bn.num_features, b.conv1[0].in_channels, b.conv2[0].out_channels)
              for b in model.blocks]
    assert widths == [(512, 256, 512, 512), (512, 128, 384, 384), (384, 64, 256, 256), (256, 64, 192, 96)]
    assert model.final_shuf[0][0].out_channels == 384
    assert model.res_block.convpath[0][0].in_channels == 97
    assert (model.head[0].in_channels, model.head[0].out_channels) == (97, 2)


def test_icnr_starts_pixel_shuffle_as_nearest_neighbour(model):
    w = model.blocks[0].shuf[0][0].weight
    groups = w.view(w.shape[0] // 4, 4, *w.shape[1:])
    assert torch.equal(groups, groups[:, :1].expand_as(groups))


def test_forward_gives_full_resolution_logits(model):
    with torch.no_grad():
        y = model(torch.randn(1, 1, 64, 64))
    assert y.shape == (1, 2, 64, 64)
    assert torch.isfinite(y).all()


def test_pretrained_file_loads_into_the_encoder(pretrained_file):
    path, state = pretrained_file
    net = UNetResNet34(in_channels=1, out_channels=2, encoder_weights=path)
    loaded = net.encoder.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for k, v in state.items():
        if k != "conv1.weight" and not k.startswith("fc."):
            assert torch.equal(loaded[k], v), k


def test_stem_for_slice_stacks_keeps_the_grey_response(pretrained_file):
    path, state = pretrained_file
    net = UNetResNet34(in_channels=5, out_channels=2, encoder_weights=path)
    stem = net.encoder.conv1.weight
    assert stem.shape == (64, 5, 7, 7)
    assert torch.allclose(stem.sum(dim=1), state["conv1.weight"].sum(dim=1))
    three = UNetResNet34(in_channels=3, out_channels=2, encoder_weights=path)
    assert torch.equal(three.encoder.conv1.weight, state["conv1.weight"])


class _NotWeights:
    pass


def _refusal(path) -> str:
    with pytest.raises(ValueError) as info:
        UNetResNet34(in_channels=1, out_channels=2, encoder_weights=str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_other_files_are_refused_with_one_line(tmp_path, pretrained_file):
    _, state = pretrained_file
    resnet18 = {k: v for k, v in state.items() if not k.startswith(("layer1.2.", "layer2.2.", "layer2.3."))}
    torch.save(resnet18, tmp_path / "resnet18.pth")
    message = _refusal(tmp_path / "resnet18.pth")
    assert "key(s) missing" in message and "'layer1.2.conv1.weight'" in message and "ResNet-34" in message

    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    assert "unknown key(s)" in _refusal(tmp_path / "other.pth")

    wrong = dict(state, **{"layer4.0.conv1.weight": torch.zeros(512, 128, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    assert "wrong shape" in _refusal(tmp_path / "wrong.pth")

    torch.save({"model": state}, tmp_path / "nested.pth")
    assert "ResNet-34" in _refusal(tmp_path / "nested.pth")

    torch.save({"net": _NotWeights()}, tmp_path / "object.pth")  # a pickled object: never unpickled
    assert "pickled Python objects" in _refusal(tmp_path / "object.pth")

    for i, junk in enumerate(("not a checkpoint\nat all\n", "hello\nworld\n", "")):
        (tmp_path / f"junk{i}.pth").write_text(junk)
        assert "ResNet-34" in _refusal(tmp_path / f"junk{i}.pth")

    assert "does not exist" in _refusal(tmp_path / "absent.pth")


def test_built_by_name_with_its_input_contract():
    assert "encoder_weights" in accepted_arguments("unet_resnet34")
    net = build_model("unet_resnet34", in_channels=1, out_channels=2)
    assert isinstance(net, UNetResNet34)
    assert input_contract(net) == {"size_multiple": 32, "spatial_dims": 2, "in_channels": 1}
