"""Tests of cunet_edge.evaluation: the feature classifier, its cache, FID/KID, evaluate_images, and the
Inception feature space (through a stand-in network: the real weights are never downloaded in tests).

One digits classifier is trained per module (about 15 s on 2 idle cores) into a temporary
cache; tests that need their own training use a 4-step config.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, cli_in_process
from PIL import Image

from cunet_edge import evaluation
from cunet_edge.data import DataConfig, load_images
from cunet_edge.errors import BackendMissingError, ConfigError, DatasetError
from cunet_edge.evaluation import (
    INCEPTION_WEIGHTS_FILE,
    ClassifierConfig,
    evaluate_checkpoint,
    evaluate_images,
    extract_features,
    feature_space,
    fid_kid,
    fid_kid_features,
    inception_weights_path,
    load_or_train_classifier,
    resolve_features,
)
from cunet_edge.models.classifier import Classifier, FeatureExtractor
from cunet_edge.models.inception import InceptionFeatures, to_uint8_rgb
from cunet_edge.records import kid_text, read_metrics
from cunet_edge.sampling import EvaluateConfig

DIGITS = DataConfig()
TINY = ClassifierConfig(steps=4)  # cheap training for the cache tests; accuracy irrelevant


@pytest.fixture(scope="module")
def cache_dir():
    # The session's cache (tests/conftest.py), so other tests reuse the classifier trained here.
    return Path(os.environ["CUNET_EDGE_CACHE"])


@pytest.fixture(autouse=True)
def _cache_env(cache_dir, monkeypatch, tmp_path):
    # Tests never write to the home directory, and never find Inception weights a user may have cached there.
    monkeypatch.setenv("CUNET_EDGE_CACHE", str(cache_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("CUNET_EDGE_INCEPTION_WEIGHTS", raising=False)


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


def test_concurrent_requests_train_once(train_calls):
    """Two requests at once for a classifier not cached (two processes sharing a cache, as pytest-xdist's workers
    do): the second waits on the entry's lock and loads what the first trained."""
    import threading

    weights, meta = evaluation._cache_paths(DIGITS, evaluation._cache_key(DIGITS, TINY))
    weights.unlink(missing_ok=True)
    got = []
    threads = [threading.Thread(target=lambda: got.append(load_or_train_classifier(DIGITS, TINY))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(train_calls) == 1 and len(got) == 2
    for key, value in got[0].state_dict().items():
        assert torch.equal(got[1].state_dict()[key], value)
    assert not list(weights.parent.glob("digits-*.lock"))  # the lock file is hidden from the cache's entries


def test_training_is_deterministic():
    first, _ = evaluation._train(DIGITS, TINY, 10)
    rng = torch.get_rng_state()
    second, _ = evaluation._train(DIGITS, TINY, 10)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)


def test_unlabelled_dataset_has_no_classifier_space(tmp_path):
    cfg = DataConfig(name="folder", root=str(tmp_path))
    with pytest.raises(DatasetError, match="no labels to train a feature classifier on: evaluate it with --features"):
        evaluate_images(torch.zeros(4, 1, 16, 16), cfg, "classifier")
    with pytest.raises(DatasetError, match="no labels"):
        load_or_train_classifier(cfg)
    assert resolve_features(cfg) == "inception" and resolve_features(DIGITS) == "classifier"
    assert resolve_features(DIGITS, "inception") == "inception"


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
        "frac_confident", "class_histogram", "features", "feature_space", "kid_subset_size",
    }
    assert expected <= set(result)
    assert result["features"] == "classifier" and result["feature_dim"] == 64
    assert result["kid_subset_size"] == 180 and result["kid_subsets"] == 100  # half the smaller set
    assert result["kid_features"].startswith("centred")
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


# --- KID: scaled features -----------------------------------------------------------------------------------


def test_scaled_kid_is_unit_free_and_steady(extractor):
    """KID on features centred and scaled by the real set does not depend on the features' units or offset (raw
    KID does), and its spread over subsets is below its value for images far from the data."""
    train_x, _ = load_images(DIGITS, "train")
    real, noise = extract_features(extractor, train_x), extract_features(extractor, _noise(300))
    std = fid_kid_features(noise, real, scale_kid=True)
    moved = fid_kid_features(noise * 7 + 3, real * 7 + 3, scale_kid=True)
    assert moved["kid_mean"] == pytest.approx(std["kid_mean"], rel=1e-6)
    assert moved["kid_std"] == pytest.approx(std["kid_std"], rel=1e-6)
    assert std["kid_std"] < std["kid_mean"] and std["kid_subset_size"] == 150  # half the smaller set
    assert evaluation._scaled(real, real).var(dim=0).mean() == pytest.approx(1.0)
    assert evaluation._scaled(real, real).mean(dim=0).abs().max() < 1e-9
    raw, raw_moved = fid_kid_features(noise, real), fid_kid_features(noise * 7 + 3, real * 7 + 3)
    assert raw_moved["kid_mean"] > 10 * raw["kid_mean"]
    assert moved["fid"] == pytest.approx(49 * std["fid"], rel=1e-6)  # FID: raw features either way
    with pytest.raises(ConfigError, match="kid_subsets"):
        fid_kid_features(noise, real, kid_subsets=0)


# --- Inception features, through a stand-in network --------------------------------------------------------


class StandInInception(torch.nn.Module):
    """A deterministic stand-in for torch-fidelity's Inception-v3 with its contract: (N, 3, H, W) uint8 images
    in (it resizes them itself), (N, 16) features out. Records the shapes it was given."""

    num_features = 16

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.3)
            self.conv.bias.zero_()
        self.seen = []

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, (x.dtype, x.shape)
        self.seen.append(tuple(x.shape[1:]))
        return torch.relu(self.conv(x.float() / 128 - 1)).mean(dim=(2, 3))


def test_kid_text():
    assert kid_text(0.0335, 0.0039) == "0.0335 ± 0.0039"
    assert kid_text(-0.0005, 0.0021) == "≈ 0 (-0.0005 ± 0.0021)"  # within twice its spread of 0
    assert kid_text(39.9, None) == "39.9"


def test_to_uint8_rgb():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    out = to_uint8_rgb(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 5)
    assert out[0, 0, 0].tolist() == [0, 64, 128, 255, 255] and torch.equal(out[:, 0], out[:, 2])
    rgb = torch.rand(2, 3, 4, 4) * 2 - 1
    assert torch.equal(to_uint8_rgb(rgb)[:, 1], to_uint8_rgb(rgb[:, 1:2])[:, 0])
    with pytest.raises(ValueError, match="1 or 3"):
        to_uint8_rgb(torch.zeros(1, 2, 4, 4))


def test_inception_space_with_a_stand_in_network(classifier):
    net = StandInInception()
    space = feature_space(DIGITS, "inception", inception_network=net)
    assert space.name == "inception" and not space.scale_kid
    result = evaluate_images(_noise(50), DIGITS, space=space)
    assert result["features"] == "inception" and result["feature_dim"] == 16 and result["kid_features"] == "raw"
    assert "stand-in" in result["feature_space"]
    assert set(net.seen) == {(3, 16, 16)}  # gray 16 px images, as uint8 RGB: the network resizes them itself
    # The real-vs-real reference is measured in the same features.
    train_x, _ = load_images(DIGITS, "train")
    test_x, _ = load_images(DIGITS, "test")
    direct = fid_kid(test_x, train_x, InceptionFeatures(StandInInception()))
    assert result["fid_real_reference"] == pytest.approx(direct["fid"], rel=1e-9)
    assert result["kid_real_reference"] == pytest.approx(direct["kid_mean"], rel=1e-9)
    assert result["fid"] > 3 * result["fid_real_reference"]  # noise is far from digits in these features too
    assert result["classifier_test_accuracy"] == classifier.test_accuracy  # labelled: confidence still given
    with pytest.raises(ConfigError, match="features are the classifier's"):
        feature_space(DIGITS, "classifier", inception_network=net)


def test_unlabelled_folder_defaults_to_inception(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        pixels = (torch.rand(8, 8, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(folder), image_size=8)
    with pytest.raises(ConfigError, match=INCEPTION_WEIGHTS_FILE):
        feature_space(cfg)  # Inception by default: its weights are looked for, and not here
    result = evaluate_images(torch.rand(10, 1, 8, 8, generator=g) * 2 - 1, cfg,
                             space=feature_space(cfg, inception_network=StandInInception()))
    assert result["features"] == "inception" and result["n_reference"] == 4 and result["n_real"] == 16
    assert "frac_confident" not in result and "class_histogram" not in result
    assert result["kid_subset_size"] == 5 and result["kid_real_reference_subset_size"] == 2


def test_missing_inception_weights_is_one_line(tmp_path, monkeypatch):
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    with pytest.raises(ConfigError) as err:
        inception_weights_path()
    msg = str(err.value)
    assert "\n" not in msg and f"{hub / INCEPTION_WEIGHTS_FILE}" in msg and "nothing is downloaded" in msg
    assert not hub.exists()  # looked for, never made or fetched
    with pytest.raises(ConfigError, match="nope.pth does not exist"):
        inception_weights_path(tmp_path / "nope.pth")
    monkeypatch.setenv("CUNET_EDGE_INCEPTION_WEIGHTS", str(tmp_path / "env.pth"))
    with pytest.raises(ConfigError, match="env.pth does not exist"):
        inception_weights_path()
    (tmp_path / "env.pth").write_bytes(b"not a state dict")
    assert inception_weights_path() == tmp_path / "env.pth"
    hub.mkdir(parents=True)
    (hub / INCEPTION_WEIGHTS_FILE).write_bytes(b"x")
    monkeypatch.delenv("CUNET_EDGE_INCEPTION_WEIGHTS")
    assert inception_weights_path() == hub / INCEPTION_WEIGHTS_FILE


def test_a_file_that_is_not_the_weights_is_one_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a state dict")
    has_fidelity = __import__("importlib").util.find_spec("torch_fidelity") is not None
    with pytest.raises(ConfigError if has_fidelity else BackendMissingError) as err:
        feature_space(DIGITS, "inception", inception_weights=str(bad))
    assert "\n" not in str(err.value)
    assert ("is not torch-fidelity's Inception weights" if has_fidelity else "cunet-edge[inception]") in str(err.value)


def test_evaluate_checkpoint_in_inception_features_reaches_the_report(tiny_checkpoint, tmp_path):
    """The whole path: config → feature space → samples → FID/KID → metrics.json → the report's rows and table."""
    from cunet_edge.report.gather import find_artifacts
    from cunet_edge.report.render import tables
    from cunet_edge.report.stage import ReportConfig, build_rows

    run_dir = tmp_path / "run"
    art = shutil.copytree(tiny_checkpoint, run_dir / "ckpt", ignore=shutil.ignore_patterns("metrics.json"))
    net = StandInInception()
    m = evaluate_checkpoint(art, EvaluateConfig(n=30, steps=2, features="inception"), inception_network=net)
    stored = read_metrics(art)["evaluate:ddim-2"]
    assert stored == json.loads(json.dumps(m)) and stored["features"] == "inception"
    assert set(net.seen) == {(3, 8, 8)} and stored["fid_real_reference"] > 0
    assert stored["kid_subset_size"] == min(30, stored["n_reference"]) // 2
    nodes, _ = find_artifacts(run_dir)
    rows = build_rows(nodes, ReportConfig(measure=False))
    row = next(r for r in rows if r["sampler_steps"] == 2)
    assert row["features"] == "inception" and row["kid"] == stored["kid_mean"]
    assert row["kid_real_reference"] == stored["kid_real_reference"]
    quality = next(t for t in tables({"stages": [], "variants": rows, "devices": []}) if t[0] == "quality")
    cells = {header: cell(row) for header, cell in quality[3]}
    assert cells["features"] == "inception"
    assert cells["KID ± std (real-vs-real)"] == (f"{kid_text(stored['kid_mean'], stored['kid_std'])} "
                                                 f"(real {stored['kid_real_reference']:.2g})")


def test_cli_inception_without_weights_fails_before_sampling(tiny_checkpoint, tmp_path):
    before = (tiny_checkpoint / "metrics.json").read_bytes() if (tiny_checkpoint / "metrics.json").exists() else None
    proc = cli_in_process("evaluate", tiny_checkpoint, "--features", "inception", "--json", tmp_path / "e.json")
    assert_one_line_error(proc, INCEPTION_WEIGHTS_FILE)
    assert not (tmp_path / "e.json").exists()
    after = (tiny_checkpoint / "metrics.json").read_bytes() if (tiny_checkpoint / "metrics.json").exists() else None
    assert after == before
    proc = cli_in_process("evaluate", tiny_checkpoint, "--features", "classifier", "--inception-weights", "w.pth")
    assert_one_line_error(proc, "inception_weights is for features")
    proc = cli_in_process("evaluate", tiny_checkpoint, "--features", "vgg")
    assert proc.returncode == 2 and "vgg" in proc.stderr  # click's choice check


def test_pipeline_checks_inception_weights_before_any_work(tiny_checkpoint, tmp_path):
    from cunet_edge.pipeline import load_recipe

    recipe = tmp_path / "r.toml"
    load = f'[[stage]]\nstage = "load"\nname = "m"\npath = "{tiny_checkpoint}"\n\n[[stage]]\nstage = "evaluate"\n'
    recipe.write_text(load + 'features = "inception"\n')
    with pytest.raises(ConfigError, match=f"stage 'evaluate' \\(evaluate\\): .*{INCEPTION_WEIGHTS_FILE}"):
        load_recipe(recipe)
    recipe.write_text(load + 'features = "vgg"\n')
    with pytest.raises(ConfigError, match="features 'vgg' is not one of"):
        load_recipe(recipe)
    recipe.write_text(load)
    assert load_recipe(recipe).stages[1].config == EvaluateConfig()  # 1,000 samples, features by the dataset
