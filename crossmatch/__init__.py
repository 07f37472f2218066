"""crossmatch-repro: CrossMatch and its baselines for semi-supervised medical image segmentation."""
__version__ = "0.1.0"
