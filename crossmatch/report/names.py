"""What figures and reports call things: methods and datasets by their
display names (declared with each method in ``crossmatch.methods.catalog``
and each dataset in ``crossmatch.data.specs``), one colour per method in
every figure, labeled counts with their unit, and typeset symbols.
"""
from __future__ import annotations

import re

from ..data.specs import get_spec
from ..methods.catalog import METHODS

# Okabe & Ito's colour-blind-safe palette, one colour per method in catalog order
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#999999", "#882255")


def method_name(method: str) -> str:
    info = METHODS.get(method)
    return (info.display or info.name) if info else method


def dataset_name(dataset: str) -> str:
    try:
        spec = get_spec(dataset)
    except ValueError:
        return dataset
    return spec.display or spec.name


def method_colour(method: str) -> str:
    names = list(METHODS)
    return PALETTE[names.index(method) % len(PALETTE)] if method in names else PALETTE[-1]


def labeled_text(dataset: str, labeled: object) -> str:
    """``3 labeled``; ISIC's counts are a percentage of the training images."""
    return f"{labeled} % labeled" if dataset == "isic" and str(labeled) != "all" else f"{labeled} labeled"


def typeset(text: str) -> str:
    """Subscripts for matplotlib: ``L_tkd`` -> L with tkd subscripted (mathtext)."""
    return re.sub(r"\bL_(\w+)", r"$L_{\\mathrm{\1}}$", text)
