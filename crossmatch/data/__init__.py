"""Datasets: specs, split lists, preprocessing, augmentation, batches."""
from .specs import DATASETS, DatasetSpec, get_spec

__all__ = ["DATASETS", "DatasetSpec", "get_spec"]
