"""3D V-Net of UA-MT / the CrossMatch LA code (16 base channels).

Dropout3d(0.5) as in those references (``has_dropout=True`` in training): on
the bottleneck, and on the last decoder stage before the output convolution.
The decoder dropout is skipped for CrossMatch's batch-stacked perturbation
streams (the reference decodes them with ``no_drop=True``) and for all of
CrossMatch's passes (``drop=False``), so it acts on plain forward passes in
training mode only (supervised, SimCVD's two dropout views);
``model.eval()`` turns both off for inference. ``model.decoder_dropout``
sets its p.
"""
from __future__ import annotations

import torch
from torch import nn


from .base import EncoderDecoder


def conv_stack(n: int, cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1),
                   nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def up(cin: int, cout: int, mode: str = "transpose") -> nn.Sequential:
    """x2 upsampling: ``transpose`` (ConvTranspose3d k2 s2, the V-Net's) or
    ``trilinear`` (fixed trilinear x2, align_corners, then a 3x3x3 conv: MC-Net's
    second decoder, ycwu1997/MC-Net ``code/networks/VNet.py``)."""
    if mode == "transpose":
        upsample: nn.Module = nn.ConvTranspose3d(cin, cout, 2, stride=2)
    elif mode == "trilinear":
        upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
                                 nn.Conv3d(cin, cout, 3, padding=1))
    else:
        raise ValueError(f"upsample must be transpose or trilinear, got {mode!r}")
    # the upsampling is item 0 either way: the layers after it keep their names
    return nn.Sequential(upsample, nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class Encoder3d(nn.Module):
    def __init__(self, in_channels: int, nf: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList([conv_stack(1, in_channels, nf), conv_stack(2, 2 * nf, 2 * nf),
                                     conv_stack(3, 4 * nf, 4 * nf), conv_stack(3, 8 * nf, 8 * nf),
                                     conv_stack(3, 16 * nf, 16 * nf)])
        self.downs = nn.ModuleList([down(nf * 2 ** i, nf * 2 ** (i + 1)) for i in range(4)])
        self.dropout = nn.Dropout3d(dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < 4:
                feats.append(x)
                x = self.downs[i](x)
        feats.append(self.dropout(x))
        return feats


class Decoder3d(nn.Module):
    def __init__(self, nf: int, n_classes: int, dropout: float = 0.5, upsample: str = "transpose"):
        super().__init__()
        self.dropout = nn.Dropout3d(dropout)
        self.ups = nn.ModuleList([up(nf * 2 ** (i + 1), nf * 2 ** i, upsample) for i in range(3, -1, -1)])
        self.blocks = nn.ModuleList([conv_stack(3, 8 * nf, 8 * nf), conv_stack(3, 4 * nf, 4 * nf),
                                     conv_stack(2, 2 * nf, 2 * nf), conv_stack(1, nf, nf)])
        self.out = nn.Conv3d(nf, n_classes, 1)

    def forward(self, feats: list[torch.Tensor], return_features: bool = False, drop: bool = True):
        x, stages = feats[-1], []
        for upsample, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = block(upsample(x) + skip)  # V-Net sums the skip, UNet concatenates it
            stages.append(x)
        if drop:  # the last stage, as the output conv sees it (nn.Dropout3d: training mode only)
            x = stages[-1] = self.dropout(x)
        return (self.out(x), stages) if return_features else self.out(x)


class VNet3d(EncoderDecoder):
    """V-Net for N x C x D x H x W inputs (each spatial size divisible by 16)."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base_filters: int = 16,
                 encoder_dropout: float = 0.5, decoder_dropout: float = 0.5, **fp):
        super().__init__(**fp)
        self.encoder = Encoder3d(in_channels, base_filters, encoder_dropout)
        self.decoder = Decoder3d(base_filters, n_classes, decoder_dropout)
        self._decoder_args = (base_filters, n_classes, decoder_dropout)

    def twin_decoder(self) -> Decoder3d:
        """A second decoder, the same but for trilinear upsampling (MC-Net's pair)."""
        return Decoder3d(*self._decoder_args, upsample="trilinear")
