"""Sample quality: FID and KID (torchmetrics) in one of two feature spaces, beside the real-vs-real figure.

- `classifier` (the default for a labelled dataset): Inception-v3 FID is meaningless on 16x16
  digits, whose images would be upscaled ~20x into a network that never saw anything like them.
  Instead a small CNN is trained once per dataset and image size (seeded, cached as safetensors +
  JSON), and its 64-d penultimate features feed torchmetrics' FID and KID through their
  custom-feature-extractor path.
- `inception` (the default for a dataset without labels, or on request): torch-fidelity's
  Inception-v3 pool3 features (2048-d), the network torchmetrics' `FrechetInceptionDistance` runs,
  loaded only from a local weights file (the torch hub cache, or a given path): never downloaded.

Every figure is reported beside the same figure, in the same features, for the real test split
against the train split, so it can be read: a generator cannot be expected to beat real held-out
images. Features are extracted once per image set; FID and KID are computed on them.

KID (an unbiased MMD² estimate with the cubic kernel (x·y/d + 1)³, averaged over random subsets)
assumes x·y/d of order 1. The classifier's raw features are far from that (SiLU outputs, norms ~46,
per-dimension means up to 11): kernel values of ~10⁴ buried the differences, and with subsets of
100 the spread over subsets was 8.6x the value. In the classifier space KID is therefore computed
on features centred on the real set's mean and divided by one scale, the real set's RMS
per-dimension standard deviation (the real features then have mean 0 and average variance 1; their
geometry is kept, so near-constant units are not blown up as per-dimension standardization would).
Subsets are half the smaller set (at most 1000), so the spread over them is about that of an
estimate from half the images: it overstates, rather than understates, the uncertainty of the mean
reported. Inception's features
are left as torchmetrics and the KID paper use them, so that figure stays comparable with published
ones.
"""

from __future__ import annotations

import contextlib
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
from .errors import BackendMissingError, ConfigError, DatasetError, OutputPathError
from .records import SOLVER, evaluate_section, kid_text, write_metrics
from .sampling import FEATURE_SPACES, EvaluateConfig, check_sample_request, draw_images
from .limits import check_seed

if TYPE_CHECKING:
    import torch

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "ClassifierConfig",
    "FeatureSpace",
    "check_features",
    "default_kid_subset",
    "evaluate_checkpoint",
    "evaluate_images",
    "extract_features",
    "feature_space",
    "fid_kid",
    "fid_kid_features",
    "format_evaluation",
    "inception_weights_path",
    "load_or_train_classifier",
    "resolve_features",
]

_ARCH_VERSION = 1  # bump when Classifier changes, so old cache files are not loaded
# The wait for another process training the same classifier (about 15 s on 2 idle cores; minutes when loaded).
CACHE_LOCK_TIMEOUT_S = 900.0
_BATCH = 512  # images per forward pass when extracting features or predicting
_INCEPTION_BATCH = 32  # Inception runs at 299 x 299: tens of MB of activations per image


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings of the feature classifier; their hash is part of the cache file name."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    max_shift: int = 2  # random translation in pixels, as augmentation
    seed: int = 0

    def __post_init__(self):
        check_seed(self.seed)
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
    with _cache_lock(weights):
        model = _load_cached(weights, meta, key)
        if model is None:
            model, info = _train(data_cfg, settings, k)
            _write_cache(model, weights, meta, {"key": key, **info})
    return model.eval()


@contextlib.contextmanager
def _cache_lock(weights: Path):
    """Hold `.<name>.lock` beside a cache entry while it is looked up and, if missing, trained and written: processes
    sharing a cache (an evaluate beside a pipeline, test workers) train each classifier once, the others wait and
    load it. A cache folder that cannot hold a lock, or a lock held longer than CACHE_LOCK_TIMEOUT_S, is not waited
    for: this process trains its own copy, as without the lock."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(weights.parent / f".{weights.stem}.lock"), timeout=CACHE_LOCK_TIMEOUT_S)
    try:
        weights.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(poll_interval=0.05)
    except (OSError, Timeout):
        yield
        return
    try:
        yield
    finally:
        lock.release()


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


# --- feature spaces ---------------------------------------------------------------------------------------

# torch-fidelity's Inception-v3 weights (converted from TensorFlow's 2015-12-05 graph): the file its
# FeatureExtractorInceptionV3 (and so torchmetrics' FID/KID) downloads into the torch hub cache. We only read it.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_WEIGHTS_ENV = "CUNET_EDGE_INCEPTION_WEIGHTS"
_INCEPTION_HINT = 'pip install "cunet-edge[inception]"'


@dataclass(frozen=True)
class FeatureSpace:
    """Where FID/KID are measured: `name` (classifier or inception), the module mapping (N, C, S, S) images in
    [-1, 1] to (N, D) float64 features, a description for the record, and whether KID scales them first."""

    name: str
    extractor: torch.nn.Module
    description: str
    scale_kid: bool
    classifier: models.Classifier | None = None  # the dataset's classifier, for the confidence figures
    batch: int = _BATCH  # images per forward pass


def resolve_features(data_cfg: DataConfig, features: str | None = None) -> str:
    """The feature space to use: `features`, or by default the classifier's for a labelled dataset and
    Inception's otherwise. A classifier space on a dataset without labels is a DatasetError."""
    labelled = num_classes(data_cfg) is not None
    if features is None:
        return "classifier" if labelled else "inception"
    if features not in FEATURE_SPACES:
        raise ConfigError(f"features {features!r} is not one of: {', '.join(FEATURE_SPACES)}")
    if features == "classifier" and not labelled:
        raise DatasetError(f"dataset {data_cfg.name} has no labels to train a feature classifier on: "
                           f"evaluate it with --features inception")
    return features


def inception_weights_path(given: str | os.PathLike | None = None) -> Path:
    """The local Inception weights file: `given`, else $CUNET_EDGE_INCEPTION_WEIGHTS, else torch-fidelity's file
    in the torch hub cache (`torch.hub.get_dir()/checkpoints`, where torchmetrics/torch-fidelity put it).

    Nothing is downloaded: a missing file is a one-line ConfigError naming the file and where to put it.
    """
    import torch

    how = f"give its path with --inception-weights or ${INCEPTION_WEIGHTS_ENV}"
    given = given or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigError(f"Inception weights file {path} does not exist (expected torch-fidelity's "
                              f"{INCEPTION_WEIGHTS_FILE}, from {INCEPTION_WEIGHTS_URL})")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not path.is_file():
        raise ConfigError(f"Inception features need torch-fidelity's weights, which are not in the local cache: "
                          f"put {INCEPTION_WEIGHTS_FILE} (from {INCEPTION_WEIGHTS_URL}) at {path}, or {how}; "
                          f"nothing is downloaded")
    return path


def _load_inception(weights: Path) -> torch.nn.Module:
    """torch-fidelity's Inception-v3 from a local weights file, every failure as one line."""
    import pickle

    try:
        return models.load_inception_v3(weights)
    except ImportError:
        raise BackendMissingError("torch-fidelity", _INCEPTION_HINT) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{weights} is not torch-fidelity's Inception weights ({INCEPTION_WEIGHTS_FILE}): "
                          f"{reason}") from None


def check_features(cfg: EvaluateConfig) -> None:
    """What an Inception evaluation needs, checked before any work: the weights file and torch-fidelity.

    (Whether features=None means Inception depends on the dataset; evaluate_checkpoint checks that case.)
    """
    if cfg.features == "inception":
        inception_weights_path(cfg.inception_weights)
        _require_torch_fidelity()


def _require_torch_fidelity() -> None:
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is None:
        raise BackendMissingError("torch-fidelity", _INCEPTION_HINT)


def feature_space(data_cfg: DataConfig, features: str | None = None, *, inception_weights: str | None = None,
                  inception_network: torch.nn.Module | None = None) -> FeatureSpace:
    """The feature space FID/KID of `data_cfg`'s images are measured in (see `resolve_features`).

    Classifier: the dataset's classifier, trained once and cached. Inception: torch-fidelity's network from
    the local weights file (`inception_weights_path`), or `inception_network`, any module with its contract
    ((N, 3, H, W) uint8 in, (N, D) features out), which then goes through the same wrapper and path.
    """
    name = resolve_features(data_cfg, features)
    if name == "classifier":
        if inception_weights is not None or inception_network is not None:
            raise ConfigError("an Inception network or weights file was given, but the features are the "
                              "classifier's: evaluate with --features inception")
        classifier = load_or_train_classifier(data_cfg)
        desc = (f"{data_cfg.name} {data_cfg.image_size}px classifier, {classifier.num_features}-d penultimate "
                f"layer (test accuracy {classifier.test_accuracy:.3f})")
        return FeatureSpace(name, models.FeatureExtractor(classifier), desc, True, classifier)
    if inception_network is None:
        weights = inception_weights_path(inception_weights)
        _require_torch_fidelity()
        inception_network, desc = _load_inception(weights), f"Inception-v3 pool3, 2048-d (torch-fidelity, {weights})"
    else:
        desc = f"Inception-v3 stand-in: {type(inception_network).__name__}"
    extractor = models.InceptionFeatures(inception_network)
    return FeatureSpace(name, extractor, desc, False, _classifier_if_labelled(data_cfg), batch=_INCEPTION_BATCH)


def _classifier_if_labelled(data_cfg: DataConfig) -> models.Classifier | None:
    return load_or_train_classifier(data_cfg) if num_classes(data_cfg) is not None else None


# --- FID / KID --------------------------------------------------------------------------------------------

KID_SUBSETS = 100  # random subset pairs KID averages over (torchmetrics' default)
KID_MAX_SUBSET = 1000  # subset size cap (torchmetrics' default and the KID paper's)
KID_SCALED = "centred on the real (train) set's mean, divided by its RMS per-dimension std"


def extract_features(extractor: torch.nn.Module, images: torch.Tensor, batch: int = _BATCH) -> torch.Tensor:
    """(N, D) float64 features of images, in batches, without gradients; non-finite features are refused."""
    import torch

    with torch.no_grad():
        feats = torch.cat([extractor(part.float()).double() for part in images.split(batch)])
    if not torch.isfinite(feats).all():
        raise DatasetError("the feature extractor returned NaN or infinite features")
    return feats


def _given_features(num_features: int) -> torch.nn.Module:
    """Features already extracted, through torchmetrics' custom-feature-extractor path: the identity."""
    import torch

    module = torch.nn.Identity()
    module.num_features = num_features
    return module


def default_kid_subset(n_generated: int, n_real: int) -> int:
    """KID's default subset size: half the smaller set (at least 2, at most 1000), so that subsets differ and
    their spread is that of an estimate from half the images."""
    return max(2, min(KID_MAX_SUBSET, min(n_generated, n_real) // 2))


def _scaled(feats: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Features centred on the real set's mean and divided by its RMS per-dimension std (one scale for all
    dimensions: the real set gets mean 0 and average variance 1, its geometry kept)."""
    scale = float(real.var(dim=0).mean().sqrt())
    return (feats - real.mean(dim=0)) / (scale if scale > 0 else 1.0)


def fid_kid_features(generated: torch.Tensor, real: torch.Tensor, *, kid_subset_size: int | None = None,
                     kid_subsets: int = KID_SUBSETS, scale_kid: bool = False) -> dict:
    """FID and KID (torchmetrics) of two (N, D) feature sets.

    KID draws `kid_subsets` random pairs of `kid_subset_size` (default `default_kid_subset`: half the smaller set,
    at most 1000) vectors, one from each set, and gives the mean and the standard deviation over them of
    the unbiased MMD² estimate; with `scale_kid` both sets are first centred and scaled by the real set
    (`_scaled`). FID is always on the features as given. KID's sampling is seeded: the same inputs give the
    same numbers.
    """
    import torch
    ensure_torchvision_imports()  # torchmetrics imports torchvision when it is installed
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(generated.shape[0], real.shape[0])
    subset = default_kid_subset(generated.shape[0], real.shape[0]) if kid_subset_size is None else kid_subset_size
    if not 2 <= subset <= n:
        raise ConfigError(f"kid_subset_size must be between 2 and {n} (the smaller set), got {subset}")
    if kid_subsets < 1:
        raise ConfigError(f"kid_subsets must be >= 1, got {kid_subsets}")
    d = int(real.shape[1])
    fid = FrechetInceptionDistance(feature=_given_features(d))
    with warnings.catch_warnings():
        # KID warns that it keeps every feature vector; they are in memory already.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_given_features(d), subsets=kid_subsets, subset_size=subset)
    fid.update(real, real=True)
    fid.update(generated, real=False)
    kid_real, kid_gen = (_scaled(real, real), _scaled(generated, real)) if scale_kid else (real, generated)
    kid.update(kid_real, real=True)
    kid.update(kid_gen, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": subset, "kid_subsets": kid_subsets}


def fid_kid(
    generated: torch.Tensor,
    real: torch.Tensor,
    extractor: torch.nn.Module,
    kid_subset_size: int | None = None,
    *,
    kid_subsets: int = KID_SUBSETS,
    scale_kid: bool = False,
) -> dict:
    """FID and KID (torchmetrics) of generated vs real images in the extractor's feature space
    (`fid_kid_features` on the features of both sets)."""
    _check_images(real, tuple(real.shape[1:]), "real images")
    _check_images(generated, tuple(real.shape[1:]), "generated images")
    return fid_kid_features(extract_features(extractor, generated), extract_features(extractor, real),
                            kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, scale_kid=scale_kid)


def evaluate_images(samples: torch.Tensor, data_cfg: DataConfig, features: str | None = None, *,
                    space: FeatureSpace | None = None) -> dict:
    """Quality of samples (N, C, S, S) in [-1, 1] against the dataset's train split, in a feature space
    (`features`, see `resolve_features`; or an already built `space`).

    Beside the samples' FID/KID stands the same figure, in the same features, for the real test split vs the
    train split (`*_real_reference`); `fid_ratio` near 1 means "as close as held-out real images". FID grows
    as sets shrink, so the ratio is fairest with about `n_reference` samples. A labelled dataset's classifier
    also gives its confidence on the samples (whatever the feature space).
    """
    if space is None:
        resolve_features(data_cfg, features)  # a bad choice fails before any loading
    train_x, _ = load_images(data_cfg, "train")
    test_x, _ = load_images(data_cfg, "test")
    _check_images(samples, tuple(train_x.shape[1:]), "samples")
    _check_images(test_x, tuple(train_x.shape[1:]), f"{data_cfg.name} test split")
    space = space or feature_space(data_cfg, features)
    real_f, gen_f, test_f = (extract_features(space.extractor, x, space.batch) for x in (train_x, samples, test_x))
    kid = {"scale_kid": space.scale_kid}
    gen = fid_kid_features(gen_f, real_f, **kid)
    ref = fid_kid_features(test_f, real_f, **kid)
    # FID is biased upward for small sets: compare like with like at the reference's size too.
    n_ref = int(test_x.shape[0])
    matched = fid_kid_features(gen_f[:n_ref], real_f, **kid)["fid"] if samples.shape[0] > n_ref else gen["fid"]
    out = {
        "features": space.name,
        "feature_space": space.description,
        "feature_dim": int(real_f.shape[1]),
        "fid": gen["fid"],
        "kid_mean": gen["kid_mean"],
        "kid_std": gen["kid_std"],
        "kid_subset_size": gen["kid_subset_size"],
        "kid_subsets": gen["kid_subsets"],
        "kid_features": KID_SCALED if space.scale_kid else "raw",
        "fid_real_reference": ref["fid"],
        "kid_real_reference": ref["kid_mean"],
        "kid_real_reference_std": ref["kid_std"],
        "kid_real_reference_subset_size": ref["kid_subset_size"],
        "fid_ratio": gen["fid"] / ref["fid"] if ref["fid"] > 0 else float("inf"),
        "fid_at_reference_n": matched,
        "fid_ratio_at_reference_n": matched / ref["fid"] if ref["fid"] > 0 else float("inf"),
        "n_samples": int(samples.shape[0]),
        "n_reference": n_ref,
        "n_real": int(train_x.shape[0]),
    }
    if space.classifier is not None:
        out.update(_confidence(space.classifier, samples, test_x))
    return out


def _confidence(classifier: models.Classifier, samples: torch.Tensor, test_x: torch.Tensor) -> dict:
    """The classifier's view of the samples: how confident it is, and the classes it sees, beside real images."""
    import torch

    probs = _predict(classifier, samples).softmax(dim=1)
    confidence = probs.max(dim=1).values
    real_confidence = _predict(classifier, test_x).softmax(dim=1).max(dim=1).values
    return {
        "classifier_test_accuracy": classifier.test_accuracy,
        "confidence_mean": float(confidence.mean()),
        "frac_confident": float((confidence >= 0.9).float().mean()),
        "frac_confident_real_reference": float((real_confidence >= 0.9).float().mean()),
        "class_histogram": torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).tolist(),
    }


def evaluate_checkpoint(path, sample_cfg, *, progress: bool = False, runtime: str | None = None,
                        inception_network: torch.nn.Module | None = None, record: bool = True,
                        **runner_options) -> dict:
    """Sample an artifact with `sample_cfg` and score the images; also saved as its metrics.json.

    The feature space comes from an EvaluateConfig's `features` (a plain SampleConfig: the default one) and is
    set up (classifier trained or loaded, Inception weights found) before any image is drawn;
    `inception_network` stands in for torch-fidelity's network (see `feature_space`). Model artifacts run in
    PyTorch by default; any artifact runs on a named runtime (ONNX Runtime, TensorRT, ...) through the numpy
    sampler, fed the same seeded noise. The artifact is opened once (`path` may be an Artifact already opened).
    """
    art = path if isinstance(path, Artifact) else Artifact.load(path)
    check_sample_request(art, sample_cfg)  # before the feature space is set up (a classifier may be trained)
    data_cfg = read_train_config(art).data
    features, weights = (sample_cfg.features, sample_cfg.inception_weights) if isinstance(
        sample_cfg, EvaluateConfig) else (None, None)
    space = feature_space(data_cfg, features, inception_weights=weights, inception_network=inception_network)
    images, runtime = draw_images(art, sample_cfg, progress=progress, runtime=runtime, **runner_options)
    metrics = evaluate_images(images, data_cfg, space=space)
    metrics.update(
        sampler=sample_cfg.sampler, sampler_steps=sample_cfg.steps, spacing=sample_cfg.spacing, eta=sample_cfg.eta,
        seed=sample_cfg.seed,
        artifact=str(art.path), artifact_id=art.manifest.get("id"), dataset=to_dict(data_cfg), runtime=runtime,
        solver=art.manifest.get(SOLVER),
    )
    # "evaluate" is the latest evaluation; the sampler-specific section keeps one per sampler setting
    # (a report can then set several sampler step counts of one artifact side by side).
    if record:  # `record=False`: the caller keeps the result (a pipeline never writes into a linked model)
        write_metrics(art.path, "evaluate", metrics)
        write_metrics(art.path, evaluate_section(sample_cfg.sampler, sample_cfg.steps, sample_cfg.spacing), metrics)
    return metrics


def format_evaluation(m: dict) -> str:
    """One line: FID and KID beside their real-vs-real figures, the classifier's confidence where there is one."""
    text = (
        f"FID {m['fid']:.3f} (real-vs-real {m['fid_real_reference']:.3f}, ratio {m['fid_ratio']:.2f}), "
        f"at n={m['n_reference']}: ratio {m['fid_ratio_at_reference_n']:.2f}; "
        f"KID {kid_text(m['kid_mean'], m['kid_std'])} "
        f"(real-vs-real {kid_text(m['kid_real_reference'], m['kid_real_reference_std'])}); "
    )
    if "frac_confident" in m:
        text += f"confident {100 * m['frac_confident']:.1f}% (real {100 * m['frac_confident_real_reference']:.1f}%); "
    return text + f"{m['features']} features"
