"""Weights of the public CrossMatch reference networks, loaded into ours.

The reference code (AiEson/CrossMatch) trains the same two networks as this
package: its ACDC ``UNet`` is our ``UNet2d(upsample="bilinear")`` (its
decoder's ``UpBlock``s take the default ``bilinear=True``: 1x1 convolution,
then bilinear x2), its LA ``VNet`` (``normalization="batchnorm"``) is our
``VNet3d``. ``load_reference_state`` maps one of its state dicts (from a
checkpoint's ``"model"``, with or without DDP's ``module.`` prefix) onto our
module names, so that a reference checkpoint can be evaluated by our
evaluator and the parity tests can feed both networks the same weights.
Tensors are matched in registration order within each block; every shape
is checked, and any tensor left over on either side is an error.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .unet2d import UNet2d
from .vnet3d import VNet3d

# reference V-Net block -> our module (the UNet registers its tensors in the same order as ours)
_VNET_BLOCKS = [
    ("block_one.", "encoder.blocks.0."), ("block_one_dw.", "encoder.downs.0."),
    ("block_two.", "encoder.blocks.1."), ("block_two_dw.", "encoder.downs.1."),
    ("block_three.", "encoder.blocks.2."), ("block_three_dw.", "encoder.downs.2."),
    ("block_four.", "encoder.blocks.3."), ("block_four_dw.", "encoder.downs.3."),
    ("block_five.", "encoder.blocks.4."), ("block_five_up.", "decoder.ups.0."),
    ("block_six.", "decoder.blocks.0."), ("block_six_up.", "decoder.ups.1."),
    ("block_seven.", "decoder.blocks.1."), ("block_seven_up.", "decoder.ups.2."),
    ("block_eight.", "decoder.blocks.2."), ("block_eight_up.", "decoder.ups.3."),
    ("block_nine.", "decoder.blocks.3."), ("out_conv.", "decoder.out."),
]


def _match(ref: dict[str, torch.Tensor], ours: dict[str, torch.Tensor],
           blocks: list[tuple[str, str]]) -> OrderedDict:
    out: OrderedDict = OrderedDict()
    for ref_prefix, our_prefix in blocks:
        a = [k for k in ref if k.startswith(ref_prefix)]
        b = [k for k in ours if k.startswith(our_prefix)]
        if len(a) != len(b):
            raise ValueError(f"reference block {ref_prefix or '(all)'!r} has {len(a)} tensors, "
                             f"ours {our_prefix or '(all)'!r} {len(b)}")
        for ka, kb in zip(a, b):
            if ref[ka].shape != ours[kb].shape:
                raise ValueError(f"reference {ka} {tuple(ref[ka].shape)} does not fit our {kb} "
                                 f"{tuple(ours[kb].shape)}")
            out[kb] = ref[ka]
    missing = [k for k in ours if k not in out]
    if missing:
        raise ValueError(f"no reference tensor for {missing[:3]} ({len(missing)} in all)")
    return out


def load_reference_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a reference network's ``state`` into our ``model`` (in place)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = model.state_dict()
    if isinstance(model, UNet2d):
        if model.decoder.ups[0].upsample != "bilinear":
            raise ValueError("the reference's 2D UNet is ours with upsample='bilinear'")
        mapped = _match(state, ours, [("", "")])
    elif isinstance(model, VNet3d):
        mapped = _match(state, ours, _VNET_BLOCKS)
    else:
        raise TypeError(f"no reference network for {type(model).__name__}")
    model.load_state_dict(mapped)
