"""prune: channels physically removed through the dependency graph, widths in the config, fine-tuning, drift."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess, run

from cunet_edge.checkpoint import load_checkpoint
from cunet_edge.config import from_dict, to_dict
from cunet_edge.errors import ConfigError
from cunet_edge.models import CUNetConfig, build_model, profile_model
from cunet_edge.pruning import PruneConfig, prune

tp = pytest.importorskip("torch_pruning")

# Seconds-fast settings for the tiny model: a coarse ratio grid, few batches, short drift runs.
QUICK = dict(ratio_step=0.1, importance_batches=2, batch_size=8, val_n=16, drift_samples=4, drift_sampler_steps=4)


@pytest.fixture(scope="module")
def pruned(tiny_checkpoint, tmp_path_factory):
    cfg = PruneConfig(target_macs=0.6, finetune_steps=3, **QUICK)
    return prune(tiny_checkpoint, cfg, tmp_path_factory.mktemp("prune") / "p", progress=False)


def _inputs(batch=3):
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, 1, 8, 8, generator=g), torch.tensor([0, 500, 999][:batch])


def test_channels_are_removed_to_the_target(pruned, tiny_checkpoint):
    parent, child = load_checkpoint(tiny_checkpoint), load_checkpoint(pruned.path)
    m, p = pruned.manifest, pruned.manifest["pruning"]
    assert m["kind"] == "checkpoint" and m["stage"] == "prune" and m["parent"]["kind"] == "checkpoint"
    assert m["parent"]["id"] == parent.artifact.manifest["id"]
    before, after = profile_model(parent.model, parent.config.model), profile_model(child.model, child.config.model)
    assert p["before"]["macs"] == before["macs"] and p["after"]["macs"] == after["macs"]
    assert p["macs_ratio"] == after["macs"] / before["macs"] <= 0.6
    assert p["params_ratio"] == after["params"] / before["params"] < 1
    # Physically smaller tensors under the same names, not masks.
    ps, cs = parent.model.state_dict(), child.model.state_dict()
    assert ps.keys() == cs.keys()
    assert all(cs[k].shape[i] <= ps[k].shape[i] for k in ps for i in range(ps[k].dim()))
    assert sum(v.numel() for v in cs.values()) < sum(v.numel() for v in ps.values())
    for gn in (mod for mod in child.model.modules() if isinstance(mod, torch.nn.GroupNorm)):
        assert gn.num_groups == 4 and gn.num_channels % 4 == 0 and gn.num_channels >= 4
    # The chosen ratio meets the target and is the closest to the parent's eps among those that do.
    step = p["iterative_steps"][0]
    meeting = [c for c in step["candidates"] if c["macs"] <= 0.6]
    full = [c for c in meeting if c["eps_inputs"] == QUICK["val_n"]]  # the head of the screening, re-measured
    assert step["macs"] <= 0.6 and step["eps_rel_err"] == min(c["eps_rel_err"] for c in full)
    assert all("eps_rel_err" not in c for c in step["candidates"] if c["macs"] > 0.6)


def test_widths_live_in_the_config(pruned):
    child = load_checkpoint(pruned.path)
    cfg = child.config.model
    assert cfg.pruned and cfg.layer_widths["enc_widths"] == list(cfg.enc_widths)
    assert pruned.manifest["pruning"]["widths"] == {k: v for k, v in cfg.layer_widths.items() if k != "block_widths"}
    nominal = dataclasses.replace(cfg, **dict.fromkeys(("enc_widths", "dec_widths", "up_widths", "ode_hidden",
                                                         "v0_hidden"))).layer_widths
    assert nominal["enc_widths"] == [8, 16] and nominal["ode_hidden"] == [8, 16, 16, 16, 16, 8]
    pairs = [(a, b) for k in nominal for a, b in zip(cfg.layer_widths[k], nominal[k])]
    assert all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)
    assert from_dict(CUNetConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    res = run("inspect", pruned.path)
    assert res.exit_code == 0 and "pruned widths: enc_widths " + "/".join(map(str, cfg.enc_widths)) in res.output


def test_rebuilt_from_config_and_safetensors_bit_identical(tiny_checkpoint, tmp_path):
    """The physically pruned modules and a model built fresh from config.json + model.safetensors agree exactly."""
    import copy

    from cunet_edge.checkpoint import save_checkpoint
    from cunet_edge.pruning import _prune_step, _pruned_config, _validation

    parent = load_checkpoint(tiny_checkpoint)
    cfg = PruneConfig(target_params=0.7, importance="l1", **QUICK)
    base = profile_model(parent.model, parent.config.model)
    work, _ = _prune_step(tp, copy.deepcopy(parent.model), 0.7, base, *_validation(parent, cfg, "cpu"), cfg)
    model_cfg = _pruned_config(parent.config.model, work)
    save_checkpoint(tmp_path / "a", dataclasses.replace(parent.config, model=model_cfg), work.state_dict(), step=6,
                    train_state=None, stage="prune")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    rebuilt = load_checkpoint(tmp_path / "a").model
    assert rebuilt is not work and type(rebuilt) is type(work)
    for k, v in work.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(work.eval()(x, t), rebuilt(x, t))
    assert profile_model(rebuilt, model_cfg)["params"] / base["params"] <= 0.7


def test_pruned_checkpoint_unrolls_exports_and_runs_everywhere(pruned, tiny_onnx, tmp_path):
    from cunet_edge.quantize.calibration import CalibrationConfig
    from cunet_edge.quantize.int8 import QuantizeConfig, quantize_int8
    from cunet_edge.runtimes.base import open_runner

    unrolled, onnx_dir = tmp_path / "u", tmp_path / "o"
    assert run("unroll", pruned.path, "--out", unrolled).exit_code == 0
    assert run("export", unrolled, "--out", onnx_dir).exit_code == 0
    man = json.loads((onnx_dir / "manifest.json").read_text())
    assert man["model_cost"]["macs"] == pruned.manifest["pruning"]["after"]["macs"]
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32), "t": np.array([0, 300, 700, 999])}
    with open_runner(onnx_dir, "onnxruntime") as ort_run, open_runner(unrolled, "torch", device="cpu") as pt:
        a, r = ort_run.infer(feed)["eps"], pt.infer(feed)["eps"]
    assert np.linalg.norm(a - r) / np.linalg.norm(r) <= 1e-4
    assert run("sample", pruned.path, "--n", 4, "--steps", 2, "--out", tmp_path / "s.png").exit_code == 0
    res = run("evaluate", onnx_dir, "--n", 20, "--steps", 2, "--json", tmp_path / "e.json")
    assert res.exit_code == 0 and json.loads((tmp_path / "e.json").read_text())["runtime"] == "onnxruntime"
    res = run("bench", onnx_dir, "--compare", tiny_onnx, "--min-iters", 3, "--min-seconds", 0.05, "--rounds", 1,
              "--sampler-steps", 2, "--threads", 1, "--json", tmp_path / "b.json")
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert res.exit_code == 0 and rows[0]["macs_per_call"] < rows[1]["macs_per_call"]
    cal = CalibrationConfig(n_images=4, sampler_steps=16, method="minmax")
    q = quantize_int8(onnx_dir, QuantizeConfig(target="cpu", calibration=cal, tolerance=0.5, select="fewest-float",
                                               val_n=8, drift_samples=2, compare_fp16=False),  # (an fp16 export)
                      tmp_path / "q", progress=False)
    with open_runner(q.path, "onnxruntime") as int8:
        assert np.isfinite(int8.infer(feed)["eps"]).all()


def test_unrolled_parent_gives_an_exportable_pruned_artifact(tiny_unrolled, tmp_path):
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx

    cfg = PruneConfig(target_params=0.7, importance="l1", scope="local", iterative_steps=2, finetune_steps=3, **QUICK)
    art = prune(tiny_unrolled, cfg, tmp_path / "p", progress=False)
    m, parent = art.manifest, json.loads((tiny_unrolled / "manifest.json").read_text())
    assert m["kind"] == "pruned" and m["solver"] == parent["solver"] and m["trained_solver"] == parent["trained_solver"]
    steps = m["pruning"]["iterative_steps"]
    assert [s["goal"] for s in steps] == pytest.approx([0.85, 0.7])
    assert all(s["params"] <= s["goal"] for s in steps) and m["pruning"]["params_ratio"] <= 0.7
    assert steps[1]["params"] <= steps[0]["params"]
    assert [s["finetune_steps"] for s in steps] == [1, 2]  # the fine-tuning budget shared between the rounds
    assert all(s["eps_rel_err_after_finetune"] > 0 for s in steps)
    export_onnx(art.path, OnnxExportConfig(), tmp_path / "o")  # verified against PyTorch inside
    refused = cli_in_process("sample", art.path, "--n", 2, "--solver", "midpoint", "--out", tmp_path / "s.png")
    assert_one_line_error(refused, "solver baked in at unroll time (euler x3)")


def test_taylor_gradients_cover_the_whole_schedule(tiny_checkpoint, monkeypatch):
    from cunet_edge.data import load_images
    from cunet_edge.pruning import _taylor_gradients

    parent = load_checkpoint(tiny_checkpoint)
    model, seen = build_model(parent.config.model), []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, t: seen.append(t.clone()) or forward(x, t))
    cfg = PruneConfig(target_macs=0.5, importance_batches=3, batch_size=10)
    _taylor_gradients(model, load_images(parent.config.data, "train")[0], parent.config, cfg, 1)
    assert len(seen) == 3
    for t in seen:  # one timestep in each tenth of the schedule, in every batch
        assert (t // 100).tolist() == list(range(10))
    assert all(p.grad is not None for p in model.parameters())
    assert model.conv_in.weight.grad.abs().sum() > 0 and model.head[-1].weight.grad.abs().sum() > 0


def test_taylor_gradients_in_micro_batches_are_the_batch_gradients(tiny_checkpoint, monkeypatch):
    """Larger images are backpropagated a few at a time (bounded memory): same gradient sum, smaller passes."""
    from cunet_edge.data import load_images
    from cunet_edge.pruning import _micro_batch, _taylor_gradients

    assert [_micro_batch(s, 64) for s in (8, 16, 32, 64, 128)] == [64, 64, 16, 4, 1]
    parent = load_checkpoint(tiny_checkpoint)
    images = load_images(parent.config.data, "train")[0]
    cfg = PruneConfig(target_macs=0.5, importance_batches=2, batch_size=10)
    grads, sizes = {}, {}
    for micro in (None, 4):
        torch.manual_seed(0)
        model, sizes[micro] = build_model(parent.config.model), []
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda x, t, f=forward, s=sizes[micro]: s.append(len(t)) or f(x, t))
        _taylor_gradients(model, images, parent.config, cfg, 1, micro=micro)
        grads[micro] = [p.grad.clone() for p in model.parameters()]
    assert sizes[None] == [10, 10] and sizes[4] == [4, 4, 2, 4, 4, 2]
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads[None], grads[4]))


def test_distillation_adds_the_teacher_term():
    from cunet_edge.diffusion import DiffusionConfig, alphas_cumprod, diffusion_loss

    torch.manual_seed(0)
    model = build_model(CUNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,),
                                    attn_heads=2, norm_groups=4, time_emb_dim=16)).eval()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    abar = torch.tensor(alphas_cumprod(DiffusionConfig()), dtype=torch.float32)

    def loss(**kw):
        with torch.no_grad():
            return diffusion_loss(model, x0, abar, torch.Generator().manual_seed(1), **kw).item()

    plain = loss()
    assert loss(teacher=model, distill_weight=5.0) == pytest.approx(plain, rel=1e-6)  # its own teacher: no pull
    seen = {}

    def zero_teacher(x, t):
        seen["eps"] = model(x, t)
        return torch.zeros_like(x)

    with_zero = loss(teacher=zero_teacher, distill_weight=2.0)
    assert with_zero == pytest.approx(plain + 2.0 * float((seen["eps"] ** 2).mean()), rel=1e-5)


def test_layer_width_config():
    base = dict(image_size=8, base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,), attn_heads=2,
                norm_groups=4, time_emb_dim=16)
    cfg = CUNetConfig(**base)
    assert not cfg.pruned and cfg.layer_widths["ode_hidden"] == [8, 16, 16, 16, 16, 8]
    explicit = CUNetConfig(**base, **{k: tuple(v) for k, v in cfg.layer_widths.items() if k != "block_widths"})
    torch.manual_seed(0)
    a = build_model(cfg).state_dict()
    torch.manual_seed(0)
    b = build_model(explicit).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    old = json.loads(json.dumps(to_dict(cfg)))
    for k in ("enc_widths", "dec_widths", "up_widths", "ode_hidden", "v0_hidden"):
        old.pop(k)  # a config written before per-layer widths existed
    assert from_dict(CUNetConfig, old) == cfg
    narrow = CUNetConfig(**base, enc_widths=(4, 8), v0_hidden=(3, 5, 1, 2, 7, 3))
    out = build_model(narrow)(*_inputs(2))
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="enc_widths needs 2 entries"):
        CUNetConfig(**base, enc_widths=(8,))
    with pytest.raises(ConfigError, match=r"ode_hidden\[1\] = 6 is not divisible by norm_groups 4"):
        CUNetConfig(**base, ode_hidden=(8, 6, 16, 16, 16, 8))
    with pytest.raises(ConfigError, match=r"up_widths\[0\] must be > 0"):
        CUNetConfig(**base, up_widths=(0,))


def test_prune_config_errors():
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ConfigError, match=r"target_macs must be a fraction of the parent's in \(0, 1\)"):
            PruneConfig(target_macs=bad)
    for kw in ({}, {"target_macs": 0.5, "target_params": 0.5}):
        with pytest.raises(ConfigError, match="give exactly one target"):
            PruneConfig(**kw)
    with pytest.raises(ConfigError, match="importance 'snip' is not one of: taylor, l1"):
        PruneConfig(target_macs=0.5, importance="snip")
    with pytest.raises(ConfigError, match="finetune_steps must be >= 0"):
        PruneConfig(target_macs=0.5, finetune_steps=-1)
    with pytest.raises(ConfigError, match="ratio_step must be in"):
        PruneConfig(target_macs=0.5, ratio_step=1.0)
    with pytest.raises(ConfigError, match="coarse_step must be in"):
        PruneConfig(target_macs=0.5, coarse_step=1.0)
    with pytest.raises(ConfigError, match="drift_samples must be"):
        PruneConfig(target_macs=0.5, drift_samples=0)
    assert PruneConfig(target_params=0.5).metric == "params"


def test_bad_input_is_one_line_and_writes_nothing(tiny_checkpoint, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(cli_subprocess("prune", tiny_checkpoint, "--target-macs", 1.5, "--out", out),
                          "target_macs must be a fraction of the parent's in (0, 1), got 1.5")  # the real entry point
    assert_one_line_error(cli_in_process("prune", tiny_checkpoint, "--out", out), "give exactly one target")
    assert_one_line_error(cli_in_process("prune", tiny_onnx, "--target-macs", 0.5, "--out", out),
                          "is an artifact of kind 'onnx'; this command needs one of: checkpoint, unrolled, pruned")
    assert_one_line_error(cli_in_process("prune", tiny_checkpoint, "--target-params", 0.5, "--importance", "snip",
                                         "--out", out), "importance 'snip' is not one of: taylor, l1")
    (tmp_path / "taken").mkdir()
    assert_one_line_error(cli_in_process("prune", tiny_checkpoint, "--target-macs", 0.5, "--out", tmp_path / "taken"),
                          "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_unreachable_target_fails_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    import cunet_edge.pruning

    def no_work(*args, **kwargs):
        raise AssertionError("pruning started")

    monkeypatch.setattr(cunet_edge.pruning, "_prune_and_finetune", no_work)
    res = run("prune", tiny_checkpoint, "--target-macs", 0.01, "--out", tmp_path / "p")
    assert res.exit_code == 1
    assert "error: target-macs 0.01 cannot be reached" in res.output and "GroupNorm" in res.output
    assert not any(tmp_path.iterdir())


def test_without_torch_pruning_or_with_a_baseline_unet(tiny_checkpoint, tmp_path, monkeypatch):
    import sys

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch_pruning", None)
        res = run("prune", tiny_checkpoint, "--target-macs", 0.5, "--out", tmp_path / "p")
    assert res.exit_code == 1 and "error: torch-pruning is not installed: pip install 'cunet-edge[prune]'" in res.output
    pytest.importorskip("diffusers")
    from cunet_edge.training import train, train_config_from_dict

    unet = {"arch": "unet", "in_channels": 1, "image_size": 8, "base_channels": 8, "channel_mults": [1, 2],
            "attn_resolutions": [4], "norm_groups": 4}
    train(train_config_from_dict({"model": unet, "data": {"name": "digits", "image_size": 8}, "steps": 1,
                                  "batch_size": 4, "warmup_steps": 0, "sample_n": 2, "sample_steps": 2}),
          tmp_path / "unet", progress=False)
    res = run("prune", tmp_path / "unet", "--target-macs", 0.5, "--out", tmp_path / "p")
    assert res.exit_code == 1 and "is a 'unet' model; prune needs a continuous U-Net" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet"]


def test_the_pruning_and_drift_records_are_checked_when_the_artifact_is_opened(pruned, tmp_path):
    """A real pruned artifact's records pass the schema (limits.check_manifest); a wrong value is a one-line error."""
    from cunet_edge.artifact import Artifact
    from cunet_edge.limits import check_manifest

    check_manifest(pruned.manifest, "pruned")
    cases = [(("pruning", "macs_ratio"), 0, "pruning.macs_ratio must be a ratio > 0, got 0"),
             (("pruning", "finetune", "steps"), 2.5, "pruning.finetune.steps must be an integer >= 0, got 2.5"),
             (("pruning", "before"), {"macs": "many"}, 'pruning.before.macs must be a number >= 0 (or "inf"/"nan")'),
             (("drift", "after_pruning", "eps_rel_err"), None, "drift.after_pruning.eps_rel_err must be a number"),
             (("drift", "sample_psnr_vs_parent"), "high", "drift.sample_psnr_vs_parent must be a number")]
    for i, (key, value, message) in enumerate(cases):
        art = tmp_path / str(i)
        import shutil
        shutil.copytree(pruned.path, art)
        manifest = json.loads((art / "manifest.json").read_text())
        node = manifest
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = value
        (art / "manifest.json").write_text(json.dumps(manifest))
        assert_one_line_error(cli_in_process("inspect", art), message)
    assert Artifact.load(pruned.path).manifest["pruning"]["macs_ratio"] < 1


def test_ratio_scan_screens_then_measures_the_head_on_all_inputs(tiny_checkpoint, tmp_path):
    """Candidates meeting the target are screened on screen_n held-out inputs and only the best few measured on all
    of them: fewer full evaluations than candidates, and the same ratio as measuring every candidate on all."""
    from cunet_edge.pruning import SCREEN_HEAD

    quick = dict(QUICK, ratio_step=0.05, coarse_step=0, finetune_steps=0, drift_samples=2)
    steps = {}
    for n in (0, 4):
        art = prune(tiny_checkpoint, PruneConfig(target_macs=0.6, screen_n=n, **quick), tmp_path / f"s{n}",
                    progress=False)
        steps[n] = art.manifest["pruning"]["iterative_steps"][0]
    every, screened = steps[0]["evaluations"], steps[4]["evaluations"]
    meeting = sum("eps_rel_err" in c for c in steps[0]["candidates"])
    assert meeting > SCREEN_HEAD and every == {"screened": 0, "screen_inputs": 0, "full": meeting, "full_inputs": 16}
    assert screened == {"screened": meeting, "screen_inputs": 4, "full": SCREEN_HEAD, "full_inputs": 16}
    assert sum(c.get("eps_inputs") == 16 for c in steps[4]["candidates"]) == SCREEN_HEAD
    assert steps[4]["ratio"] == steps[0]["ratio"] and steps[4]["eps_rel_err"] == pytest.approx(steps[0]["eps_rel_err"])


def test_coarse_scan_refines_where_the_target_is_first_met():
    """The coarse pass stops at the first ratio meeting the goal; the fine ratios on both sides of it are scanned,
    even where the curve is not monotonic; with no coarse pass (every = 1) the whole grid is."""
    from cunet_edge.pruning import _ratios_to_scan

    fine = [round(0.01 * i, 2) for i in range(1, 100)]
    meeting = {r for r in fine if r >= 0.37} - {0.41}  # not monotonic: 0.41 misses the goal again
    seen = []

    def meets(r):
        seen.append(r)
        return r in meeting

    order = _ratios_to_scan(fine, 10, meets)
    assert seen == order and len(set(seen)) == len(seen)
    assert seen[:4] == [0.1, 0.2, 0.3, 0.4]  # coarse, up to the first that meets
    assert sorted(seen[4:]) == [r for r in fine if 0.3 < r < 0.5 and r != 0.4]
    assert min(r for r in seen if r in meeting) == 0.37
    seen.clear()
    assert _ratios_to_scan(fine, 10, lambda r: seen.append(r) or False) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                             0.8, 0.9, 0.99]
    seen.clear()
    assert _ratios_to_scan(fine, 1, meets) == fine == seen


def test_coarse_scan_chooses_as_the_whole_grid_with_fewer_ratios(tiny_checkpoint, tmp_path):
    """On the tiny model the refined scan keeps the ratio the whole fine grid keeps, pruning far fewer ratios; the
    round records the scan, its parts' seconds and the phases; without fine-tuning the drift runs once."""
    from cunet_edge import pruning

    calls = []
    drift = pruning.torch_drift
    quick = dict(QUICK, ratio_step=0.02, finetune_steps=0, screen_n=0)
    steps = {}
    for coarse in (0, 0.1):
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pruning, "torch_drift", lambda *a, **k: calls.append(k["samples"]) or drift(*a, **k))
            art = prune(tiny_checkpoint, PruneConfig(target_macs=0.5, coarse_step=coarse, **quick),
                        tmp_path / f"c{coarse}", progress=False)
        assert calls == [4]  # one drift run (not one after pruning and one more after no fine-tuning)
        steps[coarse] = art.manifest["pruning"]["iterative_steps"][0]
    whole, refined = steps[0], steps[0.1]
    assert whole["scan"]["pruned"] == whole["scan"]["grid"] == 49 and refined["scan"]["grid"] == 49
    assert refined["scan"]["pruned"] < 25 and refined["scan"]["coarse_step"] == pytest.approx(0.1)
    assert refined["ratio"] == whole["ratio"] and refined["macs"] == pytest.approx(whole["macs"])
    assert set(refined["scan"]["seconds"]) == {"prune", "count", "measure"}
    assert list(refined["phases"]["wall_s"]) == ["importance", "scan", "rebuild", "drift"]
    assert all(v >= 0 for v in refined["phases"]["cpu_s"].values())


def test_drift_samples_follow_the_image_size():
    from cunet_edge.drift import drift_samples_for

    assert [drift_samples_for(s) for s in (8, 16, 32, 64)] == [16, 16, 4, 4]
    assert drift_samples_for(64, 7) == 7


def test_importance_batch_follows_the_image_size():
    """The Taylor importance's images per batch: the batch size up to 16 px, images x pixels constant above (at
    least 4); a given importance_batch stays; the gradient pass uses it."""
    cfg = PruneConfig(target_macs=0.5)
    assert [cfg.importance_batch_for(s) for s in (8, 16, 32, 64, 128)] == [64, 64, 16, 4, 4]
    assert PruneConfig(target_macs=0.5, importance_batch=12).importance_batch_for(64) == 12
    assert PruneConfig(target_macs=0.5, batch_size=2).importance_batch_for(64) == 2
    with pytest.raises(ConfigError, match="importance_batch must be"):
        PruneConfig(target_macs=0.5, importance_batch=0)


def test_taylor_gradients_use_the_importance_batch(tiny_checkpoint, monkeypatch):
    from cunet_edge.data import load_images
    from cunet_edge.pruning import _taylor_gradients

    parent = load_checkpoint(tiny_checkpoint)
    model, seen = build_model(parent.config.model), []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, t: seen.append(len(t)) or forward(x, t))
    cfg = PruneConfig(target_macs=0.5, importance_batches=2, batch_size=10, importance_batch=5)
    _taylor_gradients(model, load_images(parent.config.data, "train")[0], parent.config, cfg, 1)
    assert seen == [5, 5]
