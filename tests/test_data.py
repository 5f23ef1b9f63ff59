"""Tests of cunet_edge.data: the embedded digits set, torchvision gating, folders, PNG grids."""

from __future__ import annotations

import sys
import types
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from cunet_edge import data
from cunet_edge.config import from_dict, to_dict
from cunet_edge.data import (
    DATASETS,
    DataConfig,
    image_channels,
    load_images,
    num_classes,
    save_image_grid,
)
from cunet_edge.errors import BackendMissingError, ConfigError, DatasetError


def test_digits_sizes_shapes_and_range():
    train_x, train_y = load_images(DataConfig(), "train")
    test_x, test_y = load_images(DataConfig(), "test")
    assert train_x.shape[0] + test_x.shape[0] == 1797
    assert test_x.shape == (360, 1, 16, 16) and train_x.shape == (1437, 1, 16, 16)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    for x in (train_x, test_x):
        assert x.min() >= -1.0 and x.max() <= 1.0
        # Background is exactly -1 and ink reaches near +1: the scale is really [-1, 1].
        assert x.min() == -1.0 and x.max() > 0.9
    assert set(train_y.tolist()) == set(range(10))
    assert image_channels(DataConfig()) == 1 and num_classes(DataConfig()) == 10


def test_digits_split_is_a_stratified_partition():
    from sklearn.datasets import load_digits

    cfg = DataConfig(image_size=8)  # native size: images compare byte for byte
    (train_x, train_y), (test_x, test_y) = load_images(cfg, "train"), load_images(cfg, "test")

    def keys(x, y):
        return Counter((bytes(np.asarray(img).tobytes()), int(lab)) for img, lab in zip(x, y))

    digits = load_digits()
    full = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16 * 2 - 1
    # Train and test together are exactly the dataset, each image once: disjoint and complete.
    assert keys(train_x, train_y) + keys(test_x, test_y) == keys(full, digits.target)
    per_class = torch.bincount(test_y, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37


def test_digits_split_is_deterministic():
    before = load_images(DataConfig(), "test")
    data._load_all.cache_clear()
    after = load_images(DataConfig(), "test")
    assert before[0] is not after[0]
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_load_images_is_cached():
    assert load_images(DataConfig(), "train")[0] is load_images(DataConfig(), "train")[0]


@pytest.mark.parametrize("size", [8, 24])
def test_image_size_option(size):
    x, y = load_images(DataConfig(image_size=size), "train")
    assert x.shape == (1437, 1, size, size) and y.shape == (1437,)
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_unknown_dataset_lists_the_names():
    with pytest.raises(ConfigError) as info:
        DataConfig(name="imagenet")
    assert "imagenet" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("kwargs", [{"image_size": 3}, {"image_size": "16"}, {"name": "folder"}])
def test_bad_config_values(kwargs):
    with pytest.raises(ConfigError):
        DataConfig(**kwargs)


def test_config_round_trip_and_unknown_key():
    cfg = DataConfig(name="mnist", image_size=28, root="/data", download=True)
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(DataConfig, {"nmae": "digits"})


def test_unknown_split():
    with pytest.raises(ConfigError, match="train, test"):
        load_images(DataConfig(), "validation")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_torchvision_missing_raises_backend_missing(monkeypatch, name):
    # A None entry in sys.modules makes the import fail even where torchvision is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(BackendMissingError) as info:
        load_images(DataConfig(name=name), "train")
    assert info.value.package == "torchvision"
    assert "cunet-edge[vision]" in str(info.value)


def _fake_torchvision(monkeypatch, dataset_cls):
    """Install a stand-in torchvision whose dataset classes are all `dataset_cls`."""
    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvd.MNIST = tvd.FashionMNIST = tvd.CIFAR10 = dataset_cls
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)


def test_torchvision_files_missing_is_a_dataset_error(monkeypatch, tmp_path):
    class Missing:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    _fake_torchvision(monkeypatch, Missing)
    monkeypatch.setenv("CUNET_EDGE_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetError) as info:
        load_images(DataConfig(name="mnist"), "train")
    message = str(info.value)
    assert "mnist" in message and str(tmp_path / "data") in message
    assert "pass --download or put the files there" in message


def test_torchvision_arrays_are_resized(monkeypatch, tmp_path):
    class FakeCifar:
        def __init__(self, root, train, download):
            n = 6 if train else 4
            self.data = np.full((n, 32, 32, 3), 255, dtype=np.uint8)
            self.targets = list(range(n))

    _fake_torchvision(monkeypatch, FakeCifar)
    cfg = DataConfig(name="cifar10", root=str(tmp_path))
    x, y = load_images(cfg, "test")
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 1, 2, 3]
    assert torch.allclose(x, torch.ones_like(x))
    assert image_channels(cfg) == 3 and num_classes(cfg) == 10


def _write_pngs(folder, n, mode, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = size[::-1] + ((3,) if mode == "RGB" else ())
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(folder / f"img{i:02d}.png")


def test_folder_grayscale(tmp_path):
    _write_pngs(tmp_path / "a", 6, "L")
    _write_pngs(tmp_path / "b" / "nested", 4, "L", size=(20, 20))
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8)
    (train_x, train_y), (test_x, test_y) = load_images(cfg, "train"), load_images(cfg, "test")
    assert train_y is None and test_y is None
    assert train_x.shape == (8, 1, 8, 8) and test_x.shape == (2, 1, 8, 8)
    assert train_x.min() >= -1 and train_x.max() <= 1
    assert image_channels(cfg) == 1 and num_classes(cfg) is None
    # The split only depends on the files: a fresh read gives the same one.
    data._load_all.cache_clear()
    assert torch.equal(load_images(cfg, "test")[0], test_x)


def test_folder_mixed_modes_become_rgb(tmp_path):
    _write_pngs(tmp_path, 3, "L")
    Image.new("RGB", (9, 9), (255, 0, 0)).save(tmp_path / "red.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=4)
    x = torch.cat([load_images(cfg, "train")[0], load_images(cfg, "test")[0]])
    assert x.shape == (4, 3, 4, 4)
    red = torch.isclose(x, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1), atol=1e-5).all(dim=(1, 2, 3))
    assert red.sum() == 1
    assert image_channels(cfg) == 3


def test_folder_16bit_grayscale_is_scaled(tmp_path):
    Image.fromarray(np.full((5, 5), 65535, dtype=np.uint16)).save(tmp_path / "white.png")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint16)).save(tmp_path / "black.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=5)
    x = torch.cat([load_images(cfg, "train")[0], load_images(cfg, "test")[0]])
    assert x.shape == (2, 1, 5, 5)
    assert sorted(x.mean(dim=(1, 2, 3)).tolist()) == [-1.0, 1.0]


def test_folder_with_a_non_image_names_the_file(tmp_path):
    _write_pngs(tmp_path, 2, "L")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="notes.txt"):
        load_images(DataConfig(name="folder", root=str(tmp_path)), "train")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / ".hidden").write_text("skipped")
    with pytest.raises(DatasetError, match="no images"):
        load_images(DataConfig(name="folder", root=str(tmp_path)), "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_images(DataConfig(name="folder", root=str(tmp_path / "nope")), "train")


def test_save_image_grid_writes_png_of_expected_size(tmp_path):
    images = torch.linspace(-1, 1, 10 * 16 * 16).reshape(10, 1, 16, 16)
    out = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=5)
    with Image.open(out) as im:
        im.load()
        # 16 px tiles x4 nearest-neighbour, 2 px borders: 5 * (64 + 2) + 2 wide, 2 rows high.
        assert im.format == "PNG" and im.mode == "L" and im.size == (332, 134)
        tile = np.asarray(im)[2:66, 2:66]
    assert tile[0, 0] == 0 and tile[0, 0] == tile[3, 3]  # nearest-neighbour blocks
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temp files left


def test_save_image_grid_rgb_default_layout(tmp_path):
    out = save_image_grid(torch.zeros(5, 3, 8, 8), tmp_path / "rgb.png")
    with Image.open(out) as im:
        # 3 per row (ceil sqrt 5), 8 px tiles x8 to 64 px.
        assert im.mode == "RGB" and im.size == (3 * 66 + 2, 2 * 66 + 2)


def test_save_image_grid_rejects_bad_shapes(tmp_path):
    with pytest.raises(ConfigError):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
