"""Networks: 2D UNet and 3D V-Net, both with ``need_fp`` feature perturbation."""
from __future__ import annotations

from torch import nn

from .perturb import DROPOUT_TYPES, FeatureDropout
from .unet2d import UPSAMPLE_MODES, UNet2d
from .vnet3d import VNet3d

__all__ = ["DROPOUT_TYPES", "FeatureDropout", "UPSAMPLE_MODES", "UNet2d", "VNet3d", "build_model"]


def build_model(dim: int, in_channels: int, n_classes: int, width: int = 16, dropout_type: str = "dropout",
                fp_gap: float = 0.5, stack_streams: bool = True,
                upsample: str = "bilinear", decoder_dropout: float = 0.0) -> nn.Module:
    """The network of a ``dim``-D dataset (2 -> UNet, 3 -> V-Net).

    ``upsample`` is the 2D UNet's decoder upsampling (the V-Net always uses
    transposed convolutions): ``bilinear``, the reference's network, also
    for run configs written before the option existed (no ``model.upsample``
    key), which trained it. ``decoder_dropout`` (the V-Net's
    last-stage dropout) defaults to 0 for the same reason: configs without
    the key trained without it; new configs get the reference 0.5.
    ``width`` is the first stage's channel count (16 in both reference
    networks), doubled at each of the four downsamplings.
    """
    fp = dict(dropout_type=dropout_type, fp_gap=fp_gap, stack_streams=stack_streams)
    if dim == 2:
        features = tuple(width * 2**i for i in range(5))
        return UNet2d(in_channels, n_classes, features=features, upsample=upsample, **fp)
    if dim == 3:
        return VNet3d(in_channels, n_classes, base_filters=width, decoder_dropout=decoder_dropout, **fp)
    raise ValueError(f"dim must be 2 or 3, got {dim}")
