"""Tests of cunet_edge.evaluation: the feature classifier, its cache, FID/KID and evaluate_images.

One digits classifier is trained per module (about 15 s on 2 idle cores) into a temporary
cache; tests that need their own training use a 20-step config.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cunet_edge import evaluation
from cunet_edge.data import DataConfig, load_images
from cunet_edge.errors import ConfigError, DatasetError
from cunet_edge.evaluation import ClassifierConfig, evaluate_images, fid_kid, load_or_train_classifier
from cunet_edge.models.classifier import Classifier, FeatureExtractor

DIGITS = DataConfig()
TINY = ClassifierConfig(steps=20)  # cheap training for the cache tests; accuracy irrelevant


@pytest.fixture(scope="module")
def cache_dir():
    # The session's cache (tests/conftest.py), so other tests reuse the classifier trained here.
    return Path(os.environ["CUNET_EDGE_CACHE"])


@pytest.fixture(autouse=True)
def _cache_env(cache_dir, monkeypatch):
    # Tests never write to the home directory.
    monkeypatch.setenv("CUNET_EDGE_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def classifier(cache_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUNET_EDGE_CACHE", str(cache_dir))
        return load_or_train_classifier(DIGITS)


@pytest.fixture(scope="module")
def extractor(classifier):
    return FeatureExtractor(classifier)


@pytest.fixture
def train_calls(monkeypatch):
    """Count calls of the training function (it still trains)."""
    calls = []
    real_train = evaluation._train

    def counting(*args, **kwargs):
        calls.append(args)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_train", counting)
    return calls


def _noise(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


def test_classifier_shapes():
    model = Classifier(in_channels=3, num_classes=7)
    x = torch.zeros(5, 3, 16, 16)
    assert model.features(x).shape == (5, Classifier.num_features) == (5, 64)
    assert model(x).shape == (5, 7)


def test_classifier_accuracy(classifier):
    assert classifier.test_accuracy >= 0.97
    x, y = load_images(DIGITS, "test")
    with torch.no_grad():
        measured = (classifier(x).argmax(1) == y).float().mean().item()
    assert measured == pytest.approx(classifier.test_accuracy)


def test_cache_is_reused(classifier, cache_dir, monkeypatch):
    files = sorted((cache_dir / "classifiers").glob("digits-16px-*"))
    assert [f.suffix for f in files] == [".json", ".safetensors"]
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(evaluation, "_train", no_training)
    again = load_or_train_classifier(DIGITS)
    assert again.test_accuracy == classifier.test_accuracy
    for key, value in classifier.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    assert [f.stat().st_mtime_ns for f in files] == mtimes


@pytest.mark.parametrize("corrupt", ["weights", "json", "missing-json", "wrong-hash"])
def test_corrupted_cache_is_retrained(train_calls, corrupt):
    weights, meta = evaluation._cache_paths(DIGITS, evaluation._cache_key(DIGITS, TINY))
    weights.unlink(missing_ok=True)
    load_or_train_classifier(DIGITS, TINY)
    assert len(train_calls) == 1 and weights.exists() and meta.exists()
    if corrupt == "weights":
        weights.write_bytes(b"\x00garbage")
    elif corrupt == "json":
        meta.write_text("{not json")
    elif corrupt == "missing-json":
        meta.unlink()
    else:  # well-formed weights from another training: the JSON's hash no longer matches
        blob = weights.read_bytes()
        weights.write_bytes(blob[:-4] + bytes(4))
    load_or_train_classifier(DIGITS, TINY)
    assert len(train_calls) == 2
    load_or_train_classifier(DIGITS, TINY)  # the rewritten cache loads
    assert len(train_calls) == 2


def test_training_is_deterministic():
    first, _ = evaluation._train(DIGITS, TINY, 10)
    rng = torch.get_rng_state()
    second, _ = evaluation._train(DIGITS, TINY, 10)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)


def test_unlabelled_dataset_is_refused(tmp_path):
    cfg = DataConfig(name="folder", root=str(tmp_path))
    with pytest.raises(DatasetError, match="labelled"):
        evaluate_images(torch.zeros(4, 1, 16, 16), cfg)
    with pytest.raises(DatasetError, match="no labels"):
        load_or_train_classifier(cfg)


def test_feature_extractor(extractor):
    extractor.train()
    assert not extractor.training and not extractor.classifier.training
    feats = extractor(torch.zeros(3, 1, 16, 16, requires_grad=True))
    assert feats.shape == (3, 64) and feats.dtype == torch.float64 and not feats.requires_grad
    assert extractor.num_features == 64


def test_fid_orders_real_far_below_noise(extractor):
    train_x, _ = load_images(DIGITS, "train")
    test_x, _ = load_images(DIGITS, "test")
    real = fid_kid(test_x, train_x, extractor)
    noise = fid_kid(_noise(360), train_x, extractor)
    assert real["fid"] * 20 < noise["fid"]
    assert real["kid_mean"] + 3 * real["kid_std"] < noise["kid_mean"]


def test_fid_of_a_set_with_itself_is_zero(extractor):
    test_x, _ = load_images(DIGITS, "test")
    assert fid_kid(test_x, test_x, extractor)["fid"] == pytest.approx(0.0, abs=1e-4)


def test_kid_is_deterministic(extractor):
    train_x, _ = load_images(DIGITS, "train")
    samples = _noise(50, seed=1)
    rng = torch.get_rng_state()
    first = fid_kid(samples, train_x, extractor, kid_subset_size=20)
    second = fid_kid(samples, train_x, extractor, kid_subset_size=20)
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng)


def test_fid_kid_rejects_bad_inputs(extractor):
    train_x, _ = load_images(DIGITS, "train")
    with pytest.raises(ConfigError, match="kid_subset_size"):
        fid_kid(_noise(10), train_x, extractor, kid_subset_size=11)
    with pytest.raises(DatasetError, match="shape"):
        fid_kid(torch.zeros(10, 1, 8, 8), train_x, extractor)
    with pytest.raises(DatasetError, match="NaN"):
        fid_kid(torch.full((10, 1, 16, 16), float("nan")), train_x, extractor)


def test_evaluate_images_on_real_test_images(classifier):
    test_x, _ = load_images(DIGITS, "test")
    result = evaluate_images(test_x, DIGITS)
    expected = {
        "fid", "kid_mean", "kid_std", "fid_real_reference", "kid_real_reference", "fid_ratio",
        "n_samples", "n_reference", "classifier_test_accuracy", "confidence_mean",
        "frac_confident", "class_histogram",
    }
    assert expected <= set(result)
    assert result["fid_ratio"] == pytest.approx(1.0)
    assert result["n_samples"] == result["n_reference"] == 360
    assert result["classifier_test_accuracy"] == classifier.test_accuracy
    assert result["frac_confident"] >= 0.8 and result["confidence_mean"] >= 0.9
    hist = result["class_histogram"]
    assert len(hist) == 10 and sum(hist) == 360 and min(hist) >= 30


def test_evaluate_images_on_noise(classifier):
    result = evaluate_images(_noise(200), DIGITS)
    assert result["fid_ratio"] > 20
    assert result["frac_confident"] < 0.9
    with pytest.raises(DatasetError, match="shape"):
        evaluate_images(torch.zeros(4, 3, 16, 16), DIGITS)
