"""2D UNet of SSL4MIS / UniMatch / CrossMatch (channels 16-32-64-128-256).

``upsample="bilinear"`` (the default) is the network those references
train: every decoder stage is a 1x1 convolution, then fixed bilinear x2
upsampling (1,813,764 parameters for 1 input channel and 4 classes). Their
``UNet`` passes ``"bilinear": False`` in its params, but their ``Decoder``
never hands it to ``UpBlock``, whose default is ``bilinear=True``; the
parity test (tests/test_parity.py) loads the CrossMatch reference's weights
into this network and gets its outputs exactly.
``upsample="transpose"`` (a learned ``ConvTranspose2d(cin, cskip, 2,
stride=2)`` per stage, 1,944,324 parameters) is the branch those references
never run: an option, not the reference's network.
"""
from __future__ import annotations

import torch
from torch import nn

from ..choices import UPSAMPLE_MODES
from .base import EncoderDecoder


class ConvBlock(nn.Sequential):
    """conv3x3-BN-LeakyReLU, dropout, conv3x3-BN-LeakyReLU."""

    def __init__(self, cin: int, cout: int, p: float):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(inplace=True),
            nn.Dropout(p),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(inplace=True),
        )




class UpBlock(nn.Module):
    """x2 upsampling to ``cskip`` channels, concat with the skip, ConvBlock.

    ``bilinear``: 1x1 conv, then bilinear x2 (align_corners=True), the references' network;
    ``transpose``: ConvTranspose2d(k=2, s=2), not theirs.
    """

    def __init__(self, cin: int, cskip: int, cout: int, upsample: str = "bilinear"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.upsample = upsample
        if upsample == "bilinear":
            self.reduce = nn.Conv2d(cin, cskip, 1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = ConvBlock(2 * cskip, cout, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.upsample == "bilinear":
            x = self.reduce(x)
        return self.conv(torch.cat((skip, self.up(x)), dim=1))


class Encoder2d(nn.Module):
    def __init__(self, in_channels: int, ft: tuple[int, ...], drop: tuple[float, ...]):
        super().__init__()
        self.stages = nn.ModuleList([ConvBlock(in_channels, ft[0], drop[0])])
        for i in range(1, len(ft)):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), ConvBlock(ft[i - 1], ft[i], drop[i])))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class Decoder2d(nn.Module):
    def __init__(self, ft: tuple[int, ...], n_classes: int, upsample: str = "bilinear"):
        super().__init__()
        self.ups = nn.ModuleList(UpBlock(ft[i], ft[i - 1], ft[i - 1], upsample)
                                 for i in range(len(ft) - 1, 0, -1))
        self.out = nn.Conv2d(ft[0], n_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor], return_features: bool = False, drop: bool = True):
        # ``drop`` is the decoder-dropout switch of the shared contract; this UNet has none
        x, stages = feats[-1], []
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            x = up(x, skip)
            stages.append(x)
        return (self.out(x), stages) if return_features else self.out(x)


class UNet2d(EncoderDecoder):
    """UNet for N x C x H x W inputs (H, W divisible by 16)."""

    def __init__(self, in_channels: int = 1, n_classes: int = 4,
                 features: tuple[int, ...] = (16, 32, 64, 128, 256),
                 encoder_dropout: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5),
                 upsample: str = "bilinear", **fp):
        super().__init__(**fp)
        self.encoder = Encoder2d(in_channels, tuple(features), tuple(encoder_dropout))
        self.decoder = Decoder2d(tuple(features), n_classes, upsample)
        self._decoder_args = (tuple(features), n_classes, upsample)

    def twin_decoder(self) -> Decoder2d:
        """A second decoder, the same but for the other upsampling (MC-Net's pair:
        bilinear and transposed convolution)."""
        ft, n_classes, upsample = self._decoder_args
        other = next(m for m in UPSAMPLE_MODES if m != upsample)
        return Decoder2d(ft, n_classes, other)
