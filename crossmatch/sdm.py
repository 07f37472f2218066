"""Signed distance maps of segmentation labels (the regression target of
SimCVD's and DTC's distance heads).

Convention (DTC, SimCVD): negative inside the object, positive outside,
zero on the object's boundary, each side divided by its own largest
distance so the map lies in [-1, 1] like a ``tanh`` output.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt


def signed_distance_volume(mask: np.ndarray) -> np.ndarray:
    """Normalised signed distance map of one boolean mask (any dimension).

    Outside voxels hold their exact Euclidean distance (in voxels) to the
    nearest object voxel, inside voxels minus their distance to the nearest
    background voxel; each side is divided by its maximum. Boundary voxels
    (object voxels with a background face neighbour, i.e. inside distance 1)
    are set to 0. Without object the whole map is +1 (everything is far
    outside), with object only -1: there is no boundary to measure from.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.ones(mask.shape, np.float32)
    if mask.all():
        return -np.ones(mask.shape, np.float32)
    outside = distance_transform_edt(~mask)  # distance to the nearest object voxel
    inside = distance_transform_edt(mask)    # distance to the nearest background voxel
    sdm = outside / outside.max() - inside / inside.max()
    sdm[mask & (inside <= 1)] = 0.0
    return sdm.astype(np.float32)


def signed_distance_map(labels: np.ndarray) -> np.ndarray:
    """Batch-wise ``signed_distance_volume`` of the foreground (label > 0) of
    ``N x *spatial`` integer labels; returns float32 of the same shape."""
    labels = np.asarray(labels)
    out = np.empty(labels.shape, np.float32)
    for i, lab in enumerate(labels):
        out[i] = signed_distance_volume(lab > 0)
    return out
