"""Sample quality in the feature space of a small classifier trained on the dataset itself.

Inception-v3 FID is meaningless on 16x16 digits: the images would be upscaled ~20x into a
network that never saw anything like them. Instead a small CNN is trained once per dataset and
image size (seeded, cached as safetensors + JSON), and its 64-d penultimate features feed
torchmetrics' FID and KID through their custom-feature-extractor path. Every figure is
reported beside the same figure for the real test split against the train split, so it can be
read: a generator cannot be expected to beat real held-out images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import models
from .artifact import Artifact, write_atomic
from .checkpoint import read_train_config
from .compat import ensure_torchvision_imports
from .config import to_dict
from .data import DataConfig, load_images, num_classes
from .errors import ConfigError, DatasetError, OutputPathError
from .records import SOLVER, evaluate_section, write_metrics
from .sampling import draw_images

if TYPE_CHECKING:
    import torch

__all__ = [
    "ClassifierConfig",
    "load_or_train_classifier",
    "fid_kid",
    "evaluate_images",
    "evaluate_checkpoint",
]

_ARCH_VERSION = 1  # bump when Classifier changes, so old cache files are not loaded
_BATCH = 512  # images per forward pass when extracting features or predicting


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings of the feature classifier; their hash is part of the cache file name."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    max_shift: int = 2  # random translation in pixels, as augmentation
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"classifier {name} must be > 0, got {getattr(self, name)}")
        if self.max_shift < 0:
            raise ConfigError(f"classifier max_shift must be >= 0, got {self.max_shift}")


def load_or_train_classifier(
    data_cfg: DataConfig, settings: ClassifierConfig = ClassifierConfig()
) -> models.Classifier:
    """The dataset's feature classifier: loaded from the cache, else trained once and cached.

    A cache file that fails to load or does not match these settings is retrained, not trusted.
    """
    k = num_classes(data_cfg)
    if k is None:
        raise DatasetError(f"dataset {data_cfg.name} has no labels to train a classifier on")
    key = _cache_key(data_cfg, settings)
    weights, meta = _cache_paths(data_cfg, key)
    model = _load_cached(weights, meta, key)
    if model is None:
        model, info = _train(data_cfg, settings, k)
        _write_cache(model, weights, meta, {"key": key, **info})
    return model.eval()


def _cache_key(data_cfg: DataConfig, settings: ClassifierConfig) -> dict:
    """Everything the trained weights depend on; a cache file must match it exactly."""
    return {
        "arch_version": _ARCH_VERSION,
        "dataset": data_cfg.name,
        "image_size": data_cfg.image_size,
        "settings": to_dict(settings),
    }


def _cache_paths(data_cfg: DataConfig, key: dict) -> tuple[Path, Path]:
    """Weights and metadata paths; the name carries the dataset, size and a settings hash."""
    env = os.environ.get("CUNET_EDGE_CACHE")
    base = Path(env).expanduser() if env else Path("~/.cache/cunet-edge").expanduser()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    stem = f"{data_cfg.name}-{data_cfg.image_size}px-{digest}"
    folder = base / "classifiers"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def _load_cached(weights: Path, meta: Path, key: dict) -> models.Classifier | None:
    """The cached classifier, or None if missing, corrupted or made with other settings."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        info = json.loads(meta.read_text())
        blob = weights.read_bytes()
        # The hash ties the two files together: a crash between their renames is caught here.
        if info["key"] != key or hashlib.sha256(blob).hexdigest() != info["weights_sha256"]:
            return None
        model = models.Classifier(info["in_channels"], info["num_classes"])
        model.load_state_dict(load_safetensors(blob), strict=True)
        model.test_accuracy = float(info["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError):
        return None
    return model


def _write_cache(model: models.Classifier, weights: Path, meta: Path, info: dict) -> None:
    """Write weights then metadata, each through a temporary file and an atomic rename."""
    from safetensors.torch import save as save_safetensors

    blob = save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    info = {**info, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(weights, blob)
        write_atomic(meta, json.dumps(info, indent=2, sort_keys=True) + "\n")
    except (OSError, OutputPathError) as exc:
        # The trained model is still usable; only the next process pays for training again.
        warnings.warn(f"could not cache the classifier in {weights.parent}: {exc}", stacklevel=3)


def _train(data_cfg: DataConfig, s: ClassifierConfig, k: int) -> tuple[models.Classifier, dict]:
    """Adam with cosine-decayed lr and random-shift augmentation; seeded and deterministic."""
    import torch

    x, y = load_images(data_cfg, "train")
    gen = torch.Generator().manual_seed(s.seed)
    # fork_rng: seed the weight init without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        model = models.Classifier(x.shape[1], k)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    t0 = time.perf_counter()
    model.train()
    for step in range(s.steps):
        idx = torch.randint(0, x.shape[0], (s.batch_size,), generator=gen)
        batch = _random_shift(x[idx], s.max_shift, gen)
        for group in opt.param_groups:
            group["lr"] = s.lr * 0.5 * (1.0 + math.cos(math.pi * step / s.steps))
        loss = torch.nn.functional.cross_entropy(model(batch), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    xt, yt = load_images(data_cfg, "test")
    model.test_accuracy = float((_predict(model, xt).argmax(1) == yt).float().mean())
    info = {
        "test_accuracy": model.test_accuracy,
        "train_seconds": round(seconds, 2),
        "data_config": to_dict(data_cfg),
        "in_channels": int(x.shape[1]),
        "num_classes": k,
        "torch_version": torch.__version__,
    }
    return model, info


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by a random whole number of pixels, repeating the border."""
    import torch

    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates, where one pixel is 2 / size.
    theta[:, 0, 2] = shift[:, 0] * 2.0 / w
    theta[:, 1, 2] = shift[:, 1] * 2.0 / h
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)


def _predict(model: models.Classifier, x: torch.Tensor) -> torch.Tensor:
    """Logits of x in batches (keeps memory flat on large datasets)."""
    import torch

    with torch.no_grad():
        return torch.cat([model(part.float()) for part in x.split(_BATCH)])


def _check_images(images: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """Raise DatasetError unless images are finite (N >= 2, *shape) tensors."""
    import torch

    if not isinstance(images, torch.Tensor) or tuple(images.shape[1:]) != tuple(shape):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DatasetError(f"{what} must have shape (N, {', '.join(map(str, shape))}), got {got}")
    if images.shape[0] < 2:
        raise DatasetError(f"{what}: FID and KID need at least 2 images, got {images.shape[0]}")
    if not torch.isfinite(images).all():
        raise DatasetError(f"{what} contain NaN or infinite values")


def fid_kid(
    generated: torch.Tensor,
    real: torch.Tensor,
    extractor: torch.nn.Module,
    kid_subset_size: int | None = None,
) -> dict[str, float]:
    """FID and KID (torchmetrics) of generated vs real images in the extractor's feature space.

    KID draws 100 random subsets of `kid_subset_size` (default min(100, both set sizes)) images
    from each set; its sampling is seeded, so the same inputs give the same numbers.
    """
    import torch
    ensure_torchvision_imports()  # torchmetrics imports torchvision when it is installed
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_images(real, tuple(real.shape[1:]), "real images")
    _check_images(generated, tuple(real.shape[1:]), "generated images")
    n = min(generated.shape[0], real.shape[0])
    subset = min(100, n) if kid_subset_size is None else kid_subset_size
    if not 2 <= subset <= n:
        raise ConfigError(f"kid_subset_size must be between 2 and {n} (the smaller set), got {subset}")
    fid = FrechetInceptionDistance(feature=extractor)
    with warnings.catch_warnings():
        # KID warns that it keeps every feature vector; 64-d features make that cheap.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=extractor, subset_size=subset)
    for images, is_real in ((real, True), (generated, False)):
        for part in images.split(_BATCH):
            fid.update(part.float(), real=is_real)
            kid.update(part.float(), real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def evaluate_images(samples: torch.Tensor, data_cfg: DataConfig) -> dict:
    """Quality of samples (N, C, S, S) in [-1, 1] against a labelled dataset's train split.

    Beside the samples' FID/KID stands the same figure for the real test split vs the train
    split (`*_real_reference`); `fid_ratio` near 1 means "as close as held-out real images".
    FID grows as sets shrink, so the ratio is fairest with about `n_reference` samples.
    """
    import torch

    k = num_classes(data_cfg)
    if k is None:
        raise DatasetError(f"evaluate needs a labelled dataset; {data_cfg.name} has no labels")
    train_x, _ = load_images(data_cfg, "train")
    test_x, _ = load_images(data_cfg, "test")
    _check_images(samples, tuple(train_x.shape[1:]), "samples")
    classifier = load_or_train_classifier(data_cfg)
    extractor = models.FeatureExtractor(classifier)
    gen = fid_kid(samples, train_x, extractor)
    ref = fid_kid(test_x, train_x, extractor)
    # FID is biased upward for small sets: compare like with like at the reference's size too.
    n_ref = int(test_x.shape[0])
    matched = fid_kid(samples[:n_ref], train_x, extractor)["fid"] if samples.shape[0] > n_ref else gen["fid"]
    probs = _predict(classifier, samples).softmax(dim=1)
    confidence = probs.max(dim=1).values
    real_confidence = _predict(classifier, test_x).softmax(dim=1).max(dim=1).values
    return {
        "fid": gen["fid"],
        "kid_mean": gen["kid_mean"],
        "kid_std": gen["kid_std"],
        "fid_real_reference": ref["fid"],
        "kid_real_reference": ref["kid_mean"],
        "kid_real_reference_std": ref["kid_std"],
        "fid_ratio": gen["fid"] / ref["fid"] if ref["fid"] > 0 else float("inf"),
        "fid_at_reference_n": matched,
        "fid_ratio_at_reference_n": matched / ref["fid"] if ref["fid"] > 0 else float("inf"),
        "n_samples": int(samples.shape[0]),
        "n_reference": int(test_x.shape[0]),
        "classifier_test_accuracy": classifier.test_accuracy,
        "confidence_mean": float(confidence.mean()),
        "frac_confident": float((confidence >= 0.9).float().mean()),
        "frac_confident_real_reference": float((real_confidence >= 0.9).float().mean()),
        "class_histogram": torch.bincount(probs.argmax(dim=1), minlength=k).tolist(),
    }


def evaluate_checkpoint(path, sample_cfg, *, progress: bool = False, runtime: str | None = None,
                        **runner_options) -> dict:
    """Sample an artifact with `sample_cfg` and score the images; also saved as its metrics.json.

    Model artifacts run in PyTorch by default; any artifact runs on a named runtime (ONNX
    Runtime, TensorRT, ...) through the numpy sampler, fed the same seeded noise. The artifact
    is opened once (`path` may be an Artifact already opened).
    """
    art = path if isinstance(path, Artifact) else Artifact.load(path)
    images, runtime = draw_images(art, sample_cfg, progress=progress, runtime=runtime, **runner_options)
    data_cfg = read_train_config(art).data
    metrics = evaluate_images(images, data_cfg)
    metrics.update(
        sampler=sample_cfg.sampler, sampler_steps=sample_cfg.steps, eta=sample_cfg.eta, seed=sample_cfg.seed,
        artifact=str(art.path), artifact_id=art.manifest.get("id"), dataset=to_dict(data_cfg), runtime=runtime,
        solver=art.manifest.get(SOLVER),
    )
    # "evaluate" is the latest evaluation; the sampler-specific section keeps one per sampler setting
    # (a report can then set several sampler step counts of one artifact side by side).
    write_metrics(art.path, "evaluate", metrics)
    write_metrics(art.path, evaluate_section(sample_cfg.sampler, sample_cfg.steps), metrics)
    return metrics

