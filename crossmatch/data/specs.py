"""What the pipeline knows about each dataset: one registry entry each.

A new dataset is one ``DatasetSpec`` here plus a preprocessing function in
``crossmatch.data.preprocess``; nothing else names datasets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# the standard split lists ship inside the package (package data), so an installed
# wheel finds them from any working directory
SPLITS_DIR = Path(str(resources.files("crossmatch") / "splits"))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    dim: int                       # 2: trained on slices, 3: on patches
    n_classes: int                 # including background
    class_names: tuple[str, ...]   # foreground classes
    in_channels: int
    crop: tuple[int, ...]          # training crop/resize size
    labeled_counts: tuple[int, ...]
    eval_stride: tuple[int, ...] = ()  # 3D sliding-window stride at test time (the window: the crop)
    spacing: tuple[float, ...] | None = None  # voxel spacing (mm) when files lack it
    intensity_range: tuple[float, float] | None = None  # clip colour jitter to it (min-max data)
    # first class of the Dice losses: 0 = every class (UniMatch, 2D), 1 = foreground only (UA-MT, 3D)
    dice_from_class: int = 0
    dice_smooth: float = 1e-4      # the reference Dice's smoothing term (UniMatch 1e-4, UA-MT 1e-5)
    # list files under crossmatch/splits/<name>/, by role; {n} is the labeled count
    lists: dict[str, str] = field(default_factory=dict)
    # 2D datasets whose cases are single images (ISIC), not volumes of slices:
    # training reads volumes/ directly, there is no slices/ folder
    single_images: bool = False
    # the dataset's experiment defaults over the generic ones (crossmatch.config.DEFAULTS),
    # by config section: the paper's schedule, the default labeled count
    presets: dict[str, dict] = field(default_factory=dict)
    # where the raw files can be fetched from (a base URL the manifest paths are
    # relative to; crossmatch.data.download) and the official source, for messages
    download_url: str | None = None
    official_source: str | None = None
    # the synthetic stand-in (crossmatch.data.phantoms): cases (patients for acdc)
    # and image size, (slices, H, W) / (X, Y, Z) voxels / (H, W)
    phantom_cases: int = 10
    phantom_size: tuple[int, ...] = ()
    display: str = ""              # the name figures and reports show (default: name)

    @property
    def split_dir(self) -> Path:
        return SPLITS_DIR / self.name

    @property
    def train_subdir(self) -> str:
        """Folder of the preprocessed root that the training lists name."""
        return "slices" if self.dim == 2 and not self.single_images else "volumes"


DATASETS: dict[str, DatasetSpec] = {
    "acdc": DatasetSpec(
        name="acdc", display="ACDC", dim=2, n_classes=4, class_names=("RV", "Myo", "LV"), in_channels=1,
        crop=(256, 256), labeled_counts=(1, 3, 7, 14),
        # the SSL4MIS h5 volumes carry no spacing: mm metrics need the raw NIfTI
        spacing=None, intensity_range=(0.0, 1.0),
        lists={"labeled": "{n}/labeled.txt", "unlabeled": "{n}/unlabeled.txt",
               "val": "val.txt", "test": "test.txt", "train": "train_slices.txt"},
        # order-0 zoom and rotation of the image, as every ACDC reference code (SSL4MIS, UniMatch,
        # CrossMatch); its cost: the interpolation ablation of config/acdc_cpu_fidelity.yaml
        presets={"train": {"batch_size": 12, "optimizer": "sgd", "lr": 0.01, "iterations": 30000,
                           "interpolation": "nearest"}},
        download_url="https://github.com/AiEson/CrossMatch/raw/main/ACDC/dataset/datasets/ACDC/data",
        official_source="the CREATIS ACDC challenge site (https://www.creatis.insa-lyon.fr/Challenge/acdc/, "
                        "registration), preprocessed as in SSL4MIS",
        phantom_cases=12, phantom_size=(6, 64, 64),
    ),
    "la": DatasetSpec(
        name="la", display="LA", dim=3, n_classes=2, class_names=("LA",), in_channels=1,
        crop=(112, 112, 80), labeled_counts=(4, 8, 16), eval_stride=(18, 18, 4),
        spacing=(0.625, 0.625, 0.625), dice_from_class=1, dice_smooth=1e-5,
        lists={"labeled": "train_{n}_label.list", "unlabeled": "train_{n}_unlabel.list",
               "val": "val.list", "test": "test.list", "train": "train.list"},
        presets={"dataset": {"labeled": 8},
                 "train": {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "iterations": 14000,
                           "poly_iterations": 17000}},
        download_url="https://github.com/yulequan/UA-MT/raw/master/data/2018LA_Seg_Training%20Set",
        official_source="the 2018 Atrial Segmentation Challenge (registration), preprocessed as in UA-MT",
        phantom_cases=14, phantom_size=(48, 48, 40),
    ),
    # NIfTI CT resampled to 1 mm and cropped around the pancreas (crossmatch.data.pancreas);
    # training and Dice settings as LA (V-Net, foreground-only Dice)
    "pancreas": DatasetSpec(
        name="pancreas", display="Pancreas-CT", dim=3, n_classes=2, class_names=("Pancreas",), in_channels=1,
        crop=(96, 96, 96), labeled_counts=(3, 6, 12), eval_stride=(16, 16, 16),
        spacing=(1.0, 1.0, 1.0), dice_from_class=1, dice_smooth=1e-5,
        lists={"labeled": "train_{n}_label.list", "unlabeled": "train_{n}_unlabel.list",
               "val": "val.list", "test": "test.list", "train": "train.list"},
        # no CrossMatch reference schedule: LA's 3D recipe
        presets={"dataset": {"labeled": 6},
                 "train": {"batch_size": 2, "optimizer": "adamw", "lr": 1e-3, "iterations": 14000,
                           "poly_iterations": 17000}},
        phantom_cases=10, phantom_size=(80, 72, 24),
    ),
    # RGB dermoscopy resized to 256x256 (crossmatch.data.isic), stored H x W x 3 (channel
    # last: the batches move it first); pixels have no physical spacing after the resize
    "isic": DatasetSpec(
        name="isic", display="ISIC 2018", dim=2, n_classes=2, class_names=("Lesion",), in_channels=3,
        crop=(256, 256), labeled_counts=(5, 10, 20),  # percent of the training images
        spacing=None, intensity_range=(0.0, 1.0), single_images=True,
        lists={"labeled": "train_{n}pct_label.list", "unlabeled": "train_{n}pct_unlabel.list",
               "val": "val.list", "test": "test.list", "train": "train.list"},
        # no CrossMatch reference schedule: ACDC's 2D recipe
        presets={"dataset": {"labeled": 10},
                 "train": {"batch_size": 12, "optimizer": "sgd", "lr": 0.01, "iterations": 30000}},
        phantom_cases=20, phantom_size=(80, 100),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
