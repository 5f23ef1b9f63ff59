"""prune on imported networks: Torch-Pruning's dependency graph over the user's own code, or a refusal naming the layer.

odeunet (first-order ODE blocks, InstanceNorm, an adjoint solve) unrolled, pruned to a MACs target, reloads equal
in a fresh process and exports; diffusers' UNet2DModel and lucidrains' Unet are refused layer by layer where the
graph does not hold (and the UNet2DModel prunes once the named modules are kept whole); a network with a layer the
graph cannot follow is refused by name before any work.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli_in_process

from cunet_edge.checkpoint import load_checkpoint
from cunet_edge.compat import ensure_torchvision_imports
from cunet_edge.drift import rel_err
from cunet_edge.errors import ConfigError
from cunet_edge.importing import import_model
from cunet_edge.models import ImportedConfig, build_model, profile_model
from cunet_edge.pruning import PruneConfig, _validation, prune

tp = pytest.importorskip("torch_pruning")

BYOM = Path(__file__).resolve().parent / "byom"
# Seconds-fast settings for tiny models: a coarse ratio grid, few batches, short drift runs.
QUICK = {"ratio_step": 0.1, "importance_batches": 2, "batch_size": 8, "val_n": 16, "drift_samples": 4,
         "drift_sampler_steps": 4}


def _byom(name: str):
    sys.path.insert(0, str(BYOM))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BYOM))


def _factory(root: Path, module: str, kwargs: str, weights, diffusion: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    torch.save(weights, root / "w.pt")
    spec = root / "spec.toml"
    spec.write_text(f'[network]\nfactory = "{module}:build"\ncode_dir = "{BYOM}"\nkwargs = {kwargs}\n'
                    f'[weights]\nfile = "w.pt"\n[image]\nsize = 8\nchannels = 1\n{diffusion}')
    return spec


def _outputs(path, seed: int = 0) -> np.ndarray:
    """The loaded artifact's ε on seeded inputs across the schedule."""
    ckpt = load_checkpoint(path)
    m = ckpt.config.model
    x = torch.randn(3, m.in_channels, m.image_size, m.image_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return ckpt.model(x, torch.tensor([0, 50, ckpt.config.diffusion.timesteps - 1])).numpy()


def _reloaded_in_a_fresh_process(path, tmp_path) -> np.ndarray:
    script = ("import sys, numpy as np; sys.path.insert(0, sys.argv[3]); from test_prune_imported import _outputs; "
              "np.save(sys.argv[2], _outputs(sys.argv[1]))")
    args = [str(path), str(tmp_path / "y.npy"), str(Path(__file__).parent)]
    proc = subprocess.run([sys.executable, "-c", script, *args],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return np.load(tmp_path / "y.npy")


def _measured_again(art, parent_path, cfg: PruneConfig) -> float:
    """ε rel err of the artifact as loaded, on the held-out inputs the prune stage measured its result on."""
    parent, child = load_checkpoint(parent_path), load_checkpoint(art.path)
    val, ref = _validation(parent, cfg, "cpu")
    with torch.no_grad():
        return rel_err(child.model(*val), ref)


# -- odeunet, unrolled: pruned, reloaded, exported ----------------------------------------------------------------

ODE_CFG = PruneConfig(target_macs=0.7, finetune_steps=4, **QUICK)


@pytest.fixture(scope="module")
def ode(tmp_path_factory):
    from cunet_edge.unrolling import UnrollConfig, unroll

    root = tmp_path_factory.mktemp("odeunet")
    torch.manual_seed(0)
    spec = _factory(root, "odeunet", "{ image_size = 8, width = 8, emb_dim = 16 }",
                    _byom("odeunet").build(image_size=8, width=8, emb_dim=16).state_dict(),
                    '[diffusion]\nprediction = "v"\nschedule = "sigmoid"\ntimesteps = 200\n')
    import_model(spec, root / "imported")
    unroll(root / "imported", UnrollConfig(method="rk4", steps=1), root / "unrolled")
    art = prune(root / "unrolled", ODE_CFG, root / "pruned", progress=False)
    p, d = art.manifest["pruning"], art.manifest["drift"]
    print(f"odeunet (unrolled rk4 x1) pruned to target MACs 0.7: {p['macs_ratio']:.3f}x MACs, "
          f"{p['params_ratio']:.3f}x params; eps rel err vs parent {d['after_pruning']['eps_rel_err']:.3f} after "
          f"pruning, {d['eps_rel_err']:.3f} after {ODE_CFG.finetune_steps} fine-tuning steps")
    return root, art


def test_odeunet_prunes_to_the_target_and_records_what_changed(ode):
    root, art = ode
    m, p = art.manifest, art.manifest["pruning"]
    parent = json.loads((root / "unrolled" / "manifest.json").read_text())
    assert m["kind"] == "pruned" and m["parent"]["kind"] == "unrolled" and m["solver"] == parent["solver"]
    assert p["macs_ratio"] <= 0.7 and p["params_ratio"] < 1 and p["floor"] is None
    step = p["iterative_steps"][0]
    meeting = [c for c in step["candidates"] if c["macs"] <= 0.7]
    assert step["eps_rel_err"] == min(c["eps_rel_err"] for c in meeting)
    assert p["depgraph"]["output_layers"] == ["head"] and p["depgraph"]["prunable_groups"] >= 5
    # The config records every resized tensor and the width attributes of its layer; the image channels stay.
    model = load_checkpoint(art.path).config.model
    shapes, attrs = model.pruned["shapes"], model.pruned["attributes"]
    nominal = {k: list(v.shape) for k, v in _byom("odeunet").build(image_size=8, width=8, emb_dim=16)
               .state_dict().items()}
    assert shapes and all(len(s) == len(nominal[k]) and s != nominal[k] and all(a <= b for a, b in zip(s, nominal[k]))
                          for k, s in shapes.items())
    assert "head.weight" not in shapes or shapes["head.weight"][0] == 1
    assert attrs["stem"] == {"out_channels": shapes["stem.weight"][0]}
    assert attrs["mid.func.norm1"]["num_features"] == shapes["mid.func.norm1.weight"][0]
    assert p["widths"] == attrs
    # The artifact's network as loaded is the one the stage measured (its ε on the held-out inputs).
    assert _measured_again(art, root / "unrolled", ODE_CFG) == pytest.approx(
        p["iterative_steps"][-1]["eps_rel_err_after_finetune"], rel=1e-6)
    assert profile_model(load_checkpoint(art.path).model, model)["macs"] == p["after"]["macs"]


def test_pruned_odeunet_reloads_equal_in_a_fresh_process_and_exports(ode, tmp_path):
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx

    _, art = ode
    here = _outputs(art.path)
    assert np.isfinite(here).all() and np.array_equal(here, _reloaded_in_a_fresh_process(art.path, tmp_path))
    onnx_art = export_onnx(art.path, OnnxExportConfig(), tmp_path / "onnx")  # verified against PyTorch inside
    assert onnx_art.manifest["model_cost"]["macs"] == art.manifest["pruning"]["after"]["macs"]
    proc = cli_in_process("inspect", art.path)
    assert proc.returncode == 0 and re.search(r"pruned: \d+ layers of the network resized", proc.stdout)


def test_odeunet_checkpoint_is_traced_through_its_solves_and_keeps_them(ode, tmp_path):
    """Not unrolled: the graph is traced through one midpoint step per torchdiffeq solve, and the pruned checkpoint
    runs its own solvers (rk4, adjoint dopri5). Magnitude importance without fine-tuning, to keep it fast: training
    through the adjoint dopri5 block costs seconds a step."""
    root, _ = ode
    cfg = PruneConfig(target_params=0.7, importance="l1", finetune_steps=0, **QUICK)
    art = prune(root / "imported", cfg, tmp_path / "p", progress=False)
    p = art.manifest["pruning"]
    assert art.kind == "checkpoint" and p["params_ratio"] <= 0.7 and p["after"]["nfe_per_call"] > 1
    child = load_checkpoint(art.path)
    assert not child.config.model.unroll_method and child.config.model.pruned["shapes"]
    assert _measured_again(art, root / "imported", cfg) == pytest.approx(p["iterative_steps"][-1]["eps_rel_err"],
                                                                         rel=1e-6)


# -- diffusers' UNet2DModel: refused layer by layer, then pruned with those layers kept --------------------------


def _diffusers_unet(folder: Path) -> Path:
    ensure_torchvision_imports()
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(str(folder / "unet"))
    spec = folder / "spec.toml"
    spec.write_text('[network]\ndiffusers = "unet"\n')
    return spec


def test_diffusers_unet_refused_by_layer_then_pruned_with_them_kept(tmp_path):
    import_model(_diffusers_unet(tmp_path), tmp_path / "m")
    proc = cli_in_process("prune", tmp_path / "m", "--target-macs", 0.7, "--out", tmp_path / "p", "--no-progress")
    # Downsample2D/Upsample2D assert their input width against an attribute of their own; the attention reshapes
    # its channels into heads. Each is named, with the module it fails in and what to keep.
    assert_one_line_error(proc, "layers that fail once one channel per channel group is removed: "
                                "down_blocks.0.downsamplers.0 (Downsample2D: output channels of conv_in removed: "
                                "AssertionError)")
    err = proc.stderr
    assert "up_blocks.0.upsamplers.0 (Upsample2D" in err and "mid_block.attentions.0 (Attention" in err
    keep = re.findall(r"--keep (\S+)", err)
    assert keep == ["down_blocks.0.downsamplers.0", "up_blocks.0.upsamplers.0", "mid_block.attentions.0"]
    assert not (tmp_path / "p").exists()

    cfg = PruneConfig(target_macs=0.7, finetune_steps=3, keep=tuple(keep), **QUICK)
    art = prune(tmp_path / "m", cfg, tmp_path / "p", progress=False)
    p = art.manifest["pruning"]
    print(f"diffusers UNet2DModel, {len(keep)} modules kept: {p['macs_ratio']:.3f}x MACs, {p['params_ratio']:.3f}x "
          f"params; eps rel err {art.manifest['drift']['eps_rel_err']:.3f}")
    assert art.kind == "checkpoint" and p["macs_ratio"] <= 0.7 and p["depgraph"]["kept"] == keep
    shapes = load_checkpoint(art.path).config.model.pruned["shapes"]
    assert not any(k.startswith(tuple(keep)) for k in shapes)  # the kept modules are whole
    assert "conv_out.weight" not in shapes or shapes["conv_out.weight"][0] == 1
    # Rebuilt from config + weights (the odeunet test reloads in a fresh process too).
    assert _measured_again(art, tmp_path / "m", cfg) == pytest.approx(
        p["iterative_steps"][-1]["eps_rel_err_after_finetune"], rel=1e-6)


# -- lucidrains' Unet: refused, naming its layers -----------------------------------------------------------------


def test_lucidrains_unet_refused_naming_its_layers(tmp_path):
    ensure_torchvision_imports()
    ddp = pytest.importorskip("denoising_diffusion_pytorch")
    torch.manual_seed(0)
    torch.save(ddp.Unet(dim=8, dim_mults=(1, 2), channels=1, attn_dim_head=8, attn_heads=2).state_dict(),
               tmp_path / "w.pt")
    (tmp_path / "spec.toml").write_text(
        '[network]\nlucidrains = { dim = 8, dim_mults = [1, 2], channels = 1, attn_dim_head = 8, attn_heads = 2 }\n'
        '[weights]\nfile = "w.pt"\n[image]\nsize = 16\n')
    import_model(tmp_path / "spec.toml", tmp_path / "m")
    proc = cli_in_process("prune", tmp_path / "m", "--target-params", 0.7, "--out", tmp_path / "p")
    # Its attention's memory key/values are a 4-d parameter on the head channels; the chunked scale/shift of each
    # ResnetBlock's time projection is misread by the graph (indices past the Linear's width).
    assert_one_line_error(proc, "mid_attn (Attention: mem_kv (2, 2, 4, 8))")
    assert "downs.0.0.mlp.1 (Linear: index 31, width 16)" in proc.stderr
    assert "--keep mid_attn" in proc.stderr and "--keep downs.0.0.mlp.1" in proc.stderr
    assert not (tmp_path / "p").exists()


# -- the user's own code: a layer the graph cannot follow is refused by name, before any work ------------------


@pytest.mark.parametrize("mode, match, keep", [
    ("loose", ("parameters outside a standard layer used on channels, with more than one dimension Torch-Pruning "
               "could prune: the network (OddNet: pos (1, 8, 8, 8))"), ["pos"]),
    # The probe shows what the graph could not: the gate reads the channels of inp's group, which stays whole too.
    ("nograd", ("layers outside the autograd graph Torch-Pruning traces (torch.no_grad, .detach(), a custom autograd "
                "Function), so the channels they share are unknown: gate (Conv2d); layers that fail once one channel "
                "per channel group is removed: gate (Conv2d: output channels of inp removed: RuntimeError: "),
     ["gate", "inp"]),
])
def test_a_layer_the_graph_cannot_follow_is_refused_before_any_work(mode, match, keep, tmp_path, monkeypatch):
    import cunet_edge.pruning

    torch.manual_seed(0)
    spec = _factory(tmp_path / "src", "oddnet", f'{{ mode = "{mode}" }}', _byom("oddnet").build(mode=mode).state_dict())
    import_model(spec, tmp_path / "m")

    def no_work(*args, **kwargs):
        raise AssertionError("pruning started")

    monkeypatch.setattr(cunet_edge.pruning, "_prune_and_finetune", no_work)
    proc = cli_in_process("prune", tmp_path / "m", "--target-macs", 0.6, "--out", tmp_path / "p")
    assert_one_line_error(proc, match)
    assert re.findall(r"--keep (\S+)", proc.stderr) == keep
    assert not (tmp_path / "p").exists()
    monkeypatch.undo()
    # Kept whole as the refusal says, the rest of the network prunes.
    art = prune(tmp_path / "m", PruneConfig(target_params=0.8, importance="l1", finetune_steps=0, keep=tuple(keep),
                                            **QUICK), tmp_path / "p", progress=False)
    assert art.manifest["pruning"]["params_ratio"] <= 0.8
    shapes = load_checkpoint(art.path).config.model.pruned["shapes"]
    assert shapes and not any(k.startswith(tuple(f"{k}." for k in keep)) or k in keep for k in shapes)


def test_a_plain_factory_network_prunes_and_exports_as_a_checkpoint(tmp_path):
    from cunet_edge.export.onnx import OnnxExportConfig, export_onnx

    torch.manual_seed(0)
    import_model(_factory(tmp_path / "src", "oddnet", "{ width = 8 }", _byom("oddnet").build().state_dict()),
                 tmp_path / "m")
    cfg = PruneConfig(target_macs=0.5, scope="local", select="largest", finetune_steps=2, **QUICK)
    art = prune(tmp_path / "m", cfg, tmp_path / "p", progress=False)
    p = art.manifest["pruning"]
    assert art.kind == "checkpoint" and p["macs_ratio"] <= 0.5 and p["depgraph"]["output_layers"] == ["out"]
    pruned = load_checkpoint(art.path).config.model.pruned
    # GroupNorm(2, width) is pruned evenly in both groups: its width stays even.
    assert pruned["attributes"]["norm"]["num_channels"] % 2 == 0 and pruned["attributes"]["norm"]["num_channels"] < 8
    export_onnx(art.path, OnnxExportConfig(), tmp_path / "o")  # a network without solves exports as it is


# -- bad input ----------------------------------------------------------------------------------------------------


def test_keep_and_pruned_records_are_checked(tiny_checkpoint, tmp_path):
    torch.manual_seed(0)
    import_model(_factory(tmp_path / "src", "oddnet", "{ width = 8 }", _byom("oddnet").build().state_dict()),
                 tmp_path / "m")
    assert_one_line_error(cli_in_process("prune", tmp_path / "m", "--target-macs", 0.5, "--keep", "nothere",
                                         "--out", tmp_path / "p"),
                          "--keep nothere: the imported network has no module or parameter 'nothere'")
    assert_one_line_error(cli_in_process("prune", tiny_checkpoint, "--target-macs", 0.5, "--keep", "head",
                                         "--out", tmp_path / "p"), "--keep names modules of an imported network")
    assert not (tmp_path / "p").exists()
    model = load_checkpoint(tmp_path / "m").config.model
    base = {k: getattr(model, k) for k in ("source", "factory", "kwargs", "code_dir", "code_file", "code_sha256",
                                          "in_channels", "image_size")}
    with pytest.raises(ConfigError, match="model.pruned has an unknown key 'widths'"):
        ImportedConfig(**base, pruned={"widths": {}})
    with pytest.raises(ConfigError, match="model.pruned.shapes must map tensor names to shapes"):
        ImportedConfig(**base, pruned={"shapes": {"inp.weight": "4x1x3x3"}})
    with pytest.raises(ConfigError, match="model.pruned names tensor nothere.weight, but the network has no module"):
        build_model(ImportedConfig(**base, pruned={"shapes": {"nothere.weight": [4, 1, 3, 3]}}))
    with pytest.raises(ConfigError, match="model.pruned sets inp.out_width, which Conv2d does not have"):
        build_model(ImportedConfig(**base, pruned={"attributes": {"inp": {"out_width": 4}}}))
    resized = build_model(ImportedConfig(**base, pruned={"shapes": {"inp.weight": [4, 1, 3, 3], "inp.bias": [4]},
                                                         "attributes": {"inp": {"out_channels": 4}}}))
    assert resized.net.inp.weight.shape == (4, 1, 3, 3) and resized.net.inp.out_channels == 4


def test_user_code_that_fails_in_its_backward_pass_is_one_line(tmp_path):
    """oddnet(mode="badgrad") traces and runs, but its backward pass raises: Taylor importance says so in one line."""
    weights = _byom("oddnet").build(mode="badgrad").state_dict()
    spec = _factory(tmp_path / "src", "oddnet", '{ mode = "badgrad" }', weights)
    import_model(spec, tmp_path / "imported")
    proc = cli_in_process("prune", tmp_path / "imported", "--target-macs", 0.7, "--ratio-step", 0.2,
                          "--out", tmp_path / "p")
    assert_one_line_error(proc, "the imported network fails while computing Taylor importance (the diffusion loss's "
                                "gradients): RuntimeError: this network was never meant to be trained")
    assert not (tmp_path / "p").exists()
