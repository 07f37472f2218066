"""The values of the config keys that pick an implementation, torch-free:
config validation (and so the Snakemake process) reads them here, and the
modules that implement them import them from here."""

INTERPOLATIONS = {"linear": 1, "nearest": 0}  # image interpolation name -> scipy spline order
DROPOUT_TYPES = ("dropout", "alpha", "feature_alpha")  # feature perturbation (models/perturb.py)
UPSAMPLE_MODES = ("bilinear", "transpose")  # 2D UNet decoder upsampling (models/unet2d.py)
UNLABELED_VIEWS = ("float", "pil")  # train.unlabeled_views (data/augment.py)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision (factories.pick_precision)
LEGACY_AMP = "fp16_cuda"  # what a former train.amp: true resolves to: fp16 on CUDA, fp32 on CPU
