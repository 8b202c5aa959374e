"""fastai ``DynamicUnet`` on a ResNet-34 body: the "unet+resnet" liver baseline (kli30/liver-seg-unet,
``unet-kl.ipynb`` cells 22-23: ``unet_learner(dls, resnet34, n_in=1, n_out=2)``, fastai 2.7.10).

A plain-PyTorch rebuild of the module tree that notebook prints, so the baseline can be trained and compared
inside this package without fastai or torchvision:

* the encoder uses torchvision's ResNet-34 parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer2.0.downsample.0``) so an ImageNet ResNet-34 state-dict file loads into it directly; fastai's body is
  the same modules under ``layers.0.{0,1,4,5,6,7}``;
* inside the decoder the sub-module names and ``nn.Sequential`` indices are fastai's (``shuf.0.0``, ``bn``,
  ``conv1.0``, ``convpath.1.0``), so a fastai checkpoint maps onto this one by renaming prefixes only
  (``layers.1`` -> ``norm``, ``layers.3`` -> ``middle``, ``layers.4-7`` -> ``blocks.0-3``,
  ``layers.8`` -> ``final_shuf``, ``layers.11`` -> ``res_block``, ``layers.12`` -> ``head``);
* decoder convolutions carry a bias and no BatchNorm, as ``DynamicUnet``'s default ``norm_type=None`` builds
  them; only the skips are batch-normalised, and the encoder output once before the middle convs.

With ``in_channels=1, out_channels=2`` it has 41,207,832 parameters (encoder 21,278,400, decoder 19,929,432),
the count measured on the notebook's printed model. The forward returns logits (the authors train it with a
2-class softmax cross-entropy).
"""

from __future__ import annotations

import os
import pickle

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

#: BasicBlocks per stage and stage widths of ResNet-34
RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's attribute names, so pretrained keys load without renaming."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet34Encoder(nn.Module):
    """ResNet-34 without pooling head and ``fc``; returns every resolution the decoder taps.

    Features: stem after ReLU (H/2, 64 ch), ``layer1`` (H/4, 64), ``layer2`` (H/8, 128), ``layer3`` (H/16, 256),
    ``layer4`` (H/32, 512) -- the four places where fastai hooks the body, plus its output.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        previous = 64
        for i, (n, width) in enumerate(zip(RESNET34_BLOCKS, RESNET34_WIDTHS)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(previous, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            previous = width
        # torchvision's initialisation, so an encoder trained from scratch starts where a ResNet would
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s0 = self.relu(self.bn1(self.conv1(x)))
        s1 = self.layer1(self.maxpool(s0))
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        return [s0, s1, s2, s3, self.layer4(s3)]


def _conv_relu(in_channels: int, out_channels: int, kernel_size: int = 3, relu: bool = True) -> nn.Sequential:
    """fastai ``ConvLayer`` with ``norm_type=None``: a biased conv, optionally ReLU, as ``Sequential`` so that
    the weight sits at index 0 as in fastai's keys."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)
    nn.init.kaiming_normal_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv)


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """ICNR init (Aitken et al. 2017): the ``scale**2`` output channels that pixel-shuffle into one channel start
    with the same kernel, so the upsampling begins as nearest-neighbour and produces no checkerboard."""
    out_channels = weight.shape[0]
    if out_channels % (scale * scale):
        raise ValueError(f"ICNR needs output channels divisible by {scale * scale}, got {out_channels}")
    base = torch.empty(out_channels // (scale * scale), *weight.shape[1:])
    nn.init.kaiming_normal_(base)
    with torch.no_grad():
        weight.copy_(base.repeat_interleave(scale * scale, dim=0))
    return weight


class PixelShuffleICNR(nn.Sequential):
    """fastai ``PixelShuffle_ICNR`` (``blur=False``): 1x1 conv to ``4 * out`` channels, ReLU, pixel shuffle x2.

    Learned sub-pixel upsampling instead of transposed convs; ICNR keeps its start free of checkerboards."""

    def __init__(self, in_channels: int, out_channels: int | None = None, scale: int = 2) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        conv = _conv_relu(in_channels, out_channels * scale * scale, kernel_size=1)
        icnr_(conv[0].weight, scale)
        super().__init__(conv, nn.PixelShuffle(scale))


class UnetBlock(nn.Module):
    """fastai ``UnetBlock``: upsample, concat with the batch-normalised skip, ReLU, two conv+ReLU.

    ``final_div=False`` (the last block) halves the channel count instead of keeping it, as fastai does."""

    def __init__(self, up_in_channels: int, skip_channels: int, final_div: bool = True) -> None:
        super().__init__()
        self.shuf = PixelShuffleICNR(up_in_channels, up_in_channels // 2)
        self.bn = nn.BatchNorm2d(skip_channels)
        merged = up_in_channels // 2 + skip_channels
        self.out_channels = merged if final_div else merged // 2
        self.conv1 = _conv_relu(merged, self.out_channels)
        self.conv2 = _conv_relu(self.out_channels, self.out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.shuf(x)
        if up.shape[-2:] != skip.shape[-2:]:  # odd sizes: fastai resizes the upsampled map to the skip's
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(self.relu(torch.cat((up, self.bn(skip)), dim=1))))


class ResBlock(nn.Module):
    """fastai ``ResBlock(1, n, n)`` without normalisation: conv+ReLU, conv, identity shortcut, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convpath = nn.Sequential(_conv_relu(channels, channels), _conv_relu(channels, channels, relu=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convpath(x) + x)


@register_model("unet_resnet34")
class UNetResNet34(nn.Module):
    """fastai DynamicUnet(resnet34) with ``last_cross=True``, ``blur=False``, no self-attention, no ``y_range``."""

    #: five stride-2 stages in the encoder; other sizes work (fastai resizes) but shift the skip alignment
    size_multiple = 32
    spatial_dims = 2
    #: arguments that only initialise the weights: a model file stores the weights, not the file they came from
    init_only_arguments = ("encoder_weights",)

    def __init__(self, in_channels: int = 1, out_channels: int = 2, encoder_weights: str | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError("in_channels and out_channels must be >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.encoder = ResNet34Encoder(in_channels)
        bottom = RESNET34_WIDTHS[-1]
        self.norm = nn.BatchNorm2d(bottom)
        self.relu = nn.ReLU()
        self.middle = nn.Sequential(_conv_relu(bottom, 2 * bottom), _conv_relu(2 * bottom, bottom))
        # skips from deep to shallow: layer3, layer2, layer1, stem (the stem has 64 channels like layer1)
        skips = (RESNET34_WIDTHS[2], RESNET34_WIDTHS[1], RESNET34_WIDTHS[0], 64)
        blocks, channels = [], bottom
        for i, skip in enumerate(skips):
            block = UnetBlock(channels, skip, final_div=i != len(skips) - 1)
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.ModuleList(blocks)
        self.final_shuf = PixelShuffleICNR(channels)
        self.res_block = ResBlock(channels + in_channels)
        self.head = _conv_relu(channels + in_channels, out_channels, kernel_size=1, relu=False)
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x in_channels x H x W -> N x out_channels x H x W logits."""
        *skips, y = self.encoder(x)
        y = self.middle(self.relu(self.norm(y)))
        for block, skip in zip(self.blocks, reversed(skips)):
            y = block(y, skip)
        y = self.final_shuf(y)
        if y.shape[-2:] != x.shape[-2:]:  # fastai ResizeToOrig
            y = F.interpolate(y, size=x.shape[-2:], mode="nearest")
        return self.head(self.res_block(torch.cat((y, x), dim=1)))

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Start the encoder from a ResNet-34 state dict (e.g. ImageNet), as ``unet_learner(pretrained=True)``
        does. See :func:`resnet34_encoder_state` for the accepted layout and the stem conversion."""
        self.encoder.load_state_dict(resnet34_encoder_state(path, self.encoder), strict=True)


def _refuse(path: str | os.PathLike, problem: str) -> ValueError:
    return ValueError(f"{os.fspath(path)} is not a ResNet-34 state dict ({problem}); pass a file written by "
                      f"torch.save(resnet34().state_dict(), path) with torchvision's key names")


def resnet34_encoder_state(path: str | os.PathLike, encoder: ResNet34Encoder) -> dict[str, torch.Tensor]:
    """The file's ResNet-34 weights shaped for ``encoder``, checked key by key.

    Read with ``weights_only=True`` because weight files are downloaded, and unpickling runs code. The
    classification head (``fc.*``) is dropped. A 3-channel (RGB) stem is adapted as fastai adapts it: for one
    input channel the kernel is summed over RGB, so a grey image gives the response the RGB net gave to that
    grey repeated in R, G and B; for channel counts other than 1 and 3 (slice stacks, not colours) that summed
    kernel is spread evenly over the channels, which keeps the same response to a stack of identical slices;
    a 3-channel network takes the RGB kernel unchanged.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"encoder weights file {os.fspath(path)} does not exist; give the path of a ResNet-34 "
                         f"state-dict file") from None
    except pickle.UnpicklingError:
        raise _refuse(path, "it holds pickled Python objects besides tensors, which are never unpickled "
                            "here") from None
    except Exception as e:  # a damaged or foreign file fails anywhere in the unpickler: all mean "not weights"
        raise _refuse(path, f"torch.load cannot read it: {type(e).__name__}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise _refuse(path, "it does not hold a flat dict of tensors")
    expected = encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} key(s) missing, e.g. {missing[0]!r}"] if missing else []
        parts += [f"{len(unexpected)} unknown key(s), e.g. {unexpected[0]!r}"] if unexpected else []
        raise _refuse(path, "; ".join(parts))
    stem = state["conv1.weight"]
    target = expected["conv1.weight"].shape
    if stem.dim() == 4 and stem.shape[1] == 3 and target[1] != 3 and stem.shape[0] == target[0]:
        summed = stem.sum(dim=1, keepdim=True)
        state["conv1.weight"] = summed.repeat(1, target[1], 1, 1) / target[1]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise _refuse(path, f"{len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]}")
    out = {k: v.to(expected[k].dtype) for k, v in state.items()}
    for k, v in expected.items():  # torchvision's released files predate num_batches_tracked
        out.setdefault(k, v)
    return out
