"""Image datasets as tensors in [-1, 1], and a PNG grid writer for samples.

`digits` (scikit-learn's bundled 8x8 handwritten digits) is the default because it needs no
download and trains in minutes on a CPU. `mnist`, `fashion-mnist` and `cifar10` come through
torchvision (an optional extra, imported only here, inside the loader). `folder` reads any
directory of images through Pillow.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .artifact import write_atomic
from .compat import ensure_torchvision_imports
from .config import check_choice
from .errors import BackendMissingError, ConfigError, DatasetError

if TYPE_CHECKING:  # torch loads with the data, not with DataConfig (read by `cunet-edge train --help`)
    import torch

__all__ = [
    "DATASETS",
    "DataConfig",
    "load_images",
    "image_channels",
    "num_classes",
    "save_image_grid",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")

# name -> (torchvision.datasets class, channels); all of them have 10 classes.
_TORCHVISION = {"mnist": ("MNIST", 1), "fashion-mnist": ("FashionMNIST", 1), "cifar10": ("CIFAR10", 3)}
_CHANNELS = {"digits": 1, **{name: ch for name, (_, ch) in _TORCHVISION.items()}}
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10, "folder": None}
# Pillow modes read as one channel; 16/32-bit integer modes are scaled from the 16-bit range.
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_RESIZE_CHUNK = 4096  # images per interpolate call, so big datasets do not spike memory

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and at what square resolution."""

    name: str = "digits"
    image_size: int = 16
    root: str | None = None  # data folder (torchvision datasets) or the image folder (folder)
    download: bool = False  # let torchvision download missing files

    def __post_init__(self):
        check_choice("dataset", self.name, DATASETS)
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int):
            raise ConfigError(f"image_size must be an integer, got {self.image_size!r}")
        if self.image_size < 4:
            raise ConfigError(f"image_size must be >= 4, got {self.image_size}")
        if self.name == "folder" and not self.root:
            raise ConfigError("dataset 'folder' needs root: the directory holding the images")


def load_images(cfg: DataConfig, split: Split) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (N, C, S, S) float32 in [-1, 1] and int64 labels (None if unlabelled) of a split.

    Results are cached in-process and shared between callers: treat them as read-only.
    """
    check_choice("split", split, ("train", "test"))
    return _load_all(cfg, _resolved_root(cfg))[split]


def image_channels(cfg: DataConfig) -> int:
    """Number of image channels the dataset yields (a folder is read to find out)."""
    if cfg.name == "folder":
        return int(load_images(cfg, "train")[0].shape[1])
    return _CHANNELS[cfg.name]


def num_classes(cfg: DataConfig) -> int | None:
    """Number of label classes, or None for an unlabelled dataset."""
    return _NUM_CLASSES[cfg.name]


def _resolved_root(cfg: DataConfig) -> str:
    """The folder the dataset lives in; part of the cache key so env changes are seen."""
    if cfg.name == "digits":
        return ""
    if cfg.root:
        return str(Path(cfg.root).expanduser())
    default = Path("~/.cache/cunet-edge/data")
    return str(Path(os.environ.get("CUNET_EDGE_DATA") or default).expanduser())


@functools.lru_cache(maxsize=8)
def _load_all(cfg: DataConfig, root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Both splits of a dataset, read once per process (training and evaluation reuse them)."""
    if cfg.name == "digits":
        return _load_digits(cfg.image_size)
    if cfg.name == "folder":
        return _load_folder(Path(root), cfg.image_size)
    return _load_torchvision(cfg.name, Path(root), cfg.image_size, cfg.download)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of (N, C, H, W) to (N, C, size, size)."""
    import torch

    if x.shape[-2:] == (size, size):
        return x.contiguous()
    chunks = [
        torch.nn.functional.interpolate(
            part, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        for part in x.split(_RESIZE_CHUNK)
    ]
    # Bilinear weights are convex; the clamp only removes float rounding past the ends.
    return torch.cat(chunks).clamp_(-1.0, 1.0)


def _load_digits(size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 8x8 digits with a fixed, stratified 80/20 split."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        list(range(len(labels))), test_size=0.2, random_state=0, stratify=digits.target
    )
    images = _resize(images, size)
    out = {}
    for split, idx in (("train", idx_train), ("test", idx_test)):
        idx = torch.as_tensor(idx, dtype=torch.int64)
        out[split] = (images[idx].contiguous(), labels[idx].contiguous())
    return out


def _load_torchvision(name: str, root: Path, size: int, download: bool) -> dict:
    """Official train/test splits of a torchvision dataset, resized to `size`."""
    ensure_torchvision_imports()
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise BackendMissingError("torchvision", "pip install 'cunet-edge[vision]'") from None
    cls = getattr(tvd, _TORCHVISION[name][0])
    out = {}
    for split in ("train", "test"):
        try:
            ds = cls(str(root), train=split == "train", download=download)
        except (RuntimeError, OSError) as exc:
            if download:
                raise DatasetError(f"downloading {name} into {root} failed: {exc}") from None
            raise DatasetError(
                f"dataset {name} is not in {root}: pass --download or put the files there"
            ) from None
        out[split] = _torchvision_tensors(ds, size)
    return out


def _torchvision_tensors(ds, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a torchvision dataset's raw uint8 array directly (no per-item PIL round trip)."""
    import torch

    data = torch.as_tensor(ds.data)
    # MNIST-style datasets hold (N, H, W); CIFAR holds (N, H, W, C).
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    images = data.to(torch.float32) / 255.0 * 2.0 - 1.0
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return _resize(images, size), labels


def _list_image_files(root: Path) -> list[Path]:
    """All files under root, recursively, in sorted order; hidden files (.DS_Store) are skipped."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DatasetError(f"image folder {root} holds no images")
    return files


def _read_image(path: Path) -> torch.Tensor:
    """One image as float (C, H, W) in [0, 1]: 1 channel for grayscale modes, else RGB."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):
                # 16/32-bit grayscale: convert("L") would clip, so scale from the 16-bit range.
                arr = np.asarray(im, dtype=np.float32)[..., None] / 65535.0
            elif im.mode in _GRAY_MODES:
                arr = np.asarray(im.convert("L"), dtype=np.float32)[..., None] / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path} is not a readable image: {exc}") from None
    return torch.from_numpy(np.clip(arr, 0.0, 1.0)).permute(2, 0, 1)


def _load_folder(root: Path, size: int) -> dict[str, tuple[torch.Tensor, None]]:
    """Every image under root, resized square, split 80/20 by the hash order of their paths."""
    import torch

    files = _list_image_files(root)
    raw = [_read_image(p) for p in files]
    channels = 3 if any(img.shape[0] == 3 for img in raw) else 1
    images = torch.stack([
        _resize(img.expand(channels, -1, -1).unsqueeze(0) * 2.0 - 1.0, size)[0] for img in raw
    ])
    # Hash order makes the split depend only on the file names, not on how they sort.
    rel = [p.relative_to(root).as_posix() for p in files]
    order = sorted(range(len(files)), key=lambda i: hashlib.sha256(rel[i].encode()).hexdigest())
    test = set(order[: round(0.2 * len(files))])
    idx_train = torch.tensor([i for i in range(len(files)) if i not in test], dtype=torch.int64)
    idx_test = torch.tensor(sorted(test), dtype=torch.int64)
    return {"train": (images[idx_train], None), "test": (images[idx_test], None)}


def save_image_grid(
    images: torch.Tensor, path: str | Path, nrow: int | None = None, *, scale: int | None = None
) -> Path:
    """Write images (N, C, H, W) in [-1, 1] as one PNG grid, `nrow` images per row.

    Tiny images are enlarged by nearest-neighbour (16x16 x4 by default) so they can be seen.
    Values are clamped to [-1, 1] for display. The file is written to a temporary name and
    renamed, so a failed write never leaves a half PNG behind.
    """
    from PIL import Image

    grid = _grid_array(images, nrow, scale)
    return write_atomic(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def _grid_array(images: torch.Tensor, nrow: int | None, scale: int | None):
    """Tile images into one uint8 (H, W) or (H, W, 3) array with a grey 2-pixel border."""
    import torch

    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ConfigError(f"save_image_grid needs (N, 1|3, H, W) images, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ConfigError(f"nrow must be >= 1, got {nrow}")
    scale = scale or max(1, 64 // max(h, w))
    pad = 2
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    th, tw = h * scale, w * scale
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (th + pad) + pad, nrow * (tw + pad) + pad), 128, dtype=torch.uint8)
    for i in range(n):
        top, left = pad + (i // nrow) * (th + pad), pad + (i % nrow) * (tw + pad)
        grid[:, top : top + th, left : left + tw] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr
