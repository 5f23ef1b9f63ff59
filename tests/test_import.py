"""`import`: models trained by real third-party code (denoising-diffusion-pytorch's Trainer, diffusers, the user's
own module) become checkpoints whose samples equal the package's own, and every later stage takes them.

Bad specs are one-line errors that leave no output; a pickle holding objects is refused unrun.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, cli_in_process, cli_subprocess

from cunet_edge.artifact import Artifact
from cunet_edge.checkpoint import load_checkpoint
from cunet_edge.compat import ensure_torchvision_imports
from cunet_edge.diffusion import alphas_cumprod, sample_ddim
from cunet_edge.errors import ConfigError
from cunet_edge.quantize.calibration import CalibrationConfig
from cunet_edge.quantize.int8 import QuantizeConfig, quantize_int8

BYOM = Path(__file__).resolve().parent / "byom"


def import_lucidrains():
    """denoising_diffusion_pytorch (skips the test if it is not installed).

    It imports torchvision, which in this venv is a CUDA build beside the CPU torch: cunet_edge.compat's
    guard lets it import, as the library itself does before building a lucidrains Unet.
    """
    ensure_torchvision_imports()
    return pytest.importorskip("denoising_diffusion_pytorch")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _import_seconds(proc) -> float:
    """The import time the CLI's summary line reports."""
    return float(re.search(r"imported in ([0-9.]+) s", proc.stdout).group(1))


def _no_output(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")), "a staging folder was left behind"


# -- lucidrains' denoising-diffusion-pytorch -------------------------------------------------------------------

LUCIDRAINS_UNET = {"dim": 8, "dim_mults": [1, 2], "channels": 1, "attn_dim_head": 8, "attn_heads": 2}
LUCIDRAINS_T, LUCIDRAINS_S = 100, 10  # training timesteps; DDIM sampling timesteps


@pytest.fixture(scope="module")
def lucidrains_run(tmp_path_factory):
    """A tiny Unet in GaussianDiffusion(pred_v, sigmoid) trained 4 steps by the package's own Trainer on PNG digits."""
    ddp = import_lucidrains()
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("lucidrains")
    images = _mkdir(root / "images")  # the Trainer wants >= 100 images
    for i, img in enumerate(load_digits().images[:112]):
        Image.fromarray((img / 16 * 255).astype(np.uint8)).resize((16, 16), Image.BILINEAR).save(images / f"{i}.png")
    torch.manual_seed(0)
    diffusion = ddp.GaussianDiffusion(ddp.Unet(**LUCIDRAINS_UNET), image_size=16, timesteps=LUCIDRAINS_T,
                                      sampling_timesteps=LUCIDRAINS_S, objective="pred_v", beta_schedule="sigmoid")
    trainer = ddp.Trainer(diffusion, str(images), train_batch_size=16, train_num_steps=4,
                          save_and_sample_every=2, num_samples=4, results_folder=str(root / "results"), amp=False,
                          calculate_fid=False)
    trainer.train()
    assert (root / "results" / "model-2.pt").is_file()
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lucidrains_spec(root: Path, name: str = "spec.toml", diffusion: str = "", **weights) -> Path:
    w = {"file": "results/model-2.pt", "key": "ema", "prefix": "ema_model.model."} | weights
    unet = ", ".join(f"{k} = {json.dumps(v)}" for k, v in LUCIDRAINS_UNET.items())
    return _write(root / name, f"[network]\nlucidrains = {{ {unet} }}\n[weights]\n"
                  + "".join(f"{k} = {json.dumps(v)}\n" for k, v in w.items())
                  + (f"[diffusion]\n{diffusion}\n" if diffusion else "") + "[image]\nsize = 16\n")


@pytest.fixture(scope="module")
def lucidrains_ckpt(lucidrains_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "lucidrains"
    proc = cli_in_process("import", _lucidrains_spec(lucidrains_run), "--out", out,
                          "--json", out.parent / "import.json")
    assert proc.returncode == 0, proc.stderr
    print(f"lucidrains import: {_import_seconds(proc):.2f} s")
    return out, proc


def test_lucidrains_import_records_what_it_trained_with(lucidrains_run, lucidrains_ckpt):
    out, proc = lucidrains_ckpt
    art = Artifact.load(out, kinds=["checkpoint"])
    rec, cfg = art.manifest["import"], art.config
    assert art.manifest["stage"] == "import" and rec["source"] == "lucidrains"
    assert cfg["model"]["arch"] == "imported" and cfg["model"]["kwargs"] == LUCIDRAINS_UNET
    # The objective from the loss_weight buffer, the betas from the betas buffer: both as trained.
    assert cfg["diffusion"]["prediction"] == "v" and rec["diffusion_from"]["prediction"] == "checkpoint buffers"
    trained = torch.load(lucidrains_run / "results" / "model-2.pt", weights_only=True)["ema"]["ema_model.betas"]
    np.testing.assert_allclose(cfg["diffusion"]["betas"], trained.double().numpy(), rtol=0, atol=0)
    assert cfg["diffusion"]["timesteps"] == LUCIDRAINS_T and cfg["data"] == {**cfg["data"], "name": "digits",
                                                                             "image_size": 16}
    roles = {r["role"]: r for r in rec["inputs"]}
    assert set(roles) == {"spec", "weights"}
    assert roles["weights"]["sha256"] == _sha256(lucidrains_run / "results" / "model-2.pt")
    assert rec["weights"] | {"tensors": 0} == {"file": str(lucidrains_run / "results" / "model-2.pt"), "key": "ema",
                                               "prefix": "ema_model.model.", "tensors": 0, "missing": [],
                                               "unexpected": [], "wrong_shape": []}
    assert "denoising-diffusion-pytorch" in rec["versions"] and rec["source_step"] == 4
    j = json.loads((out.parent / "import.json").read_text())
    assert j["seconds"] == pytest.approx(_import_seconds(proc), abs=0.01) and j["params"] == rec["params"]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lucidrains_samples_equal_the_packages_own(lucidrains_run, lucidrains_ckpt):
    """Our DDIM on the imported checkpoint = GaussianDiffusion.ddim_sample from the same starting noise."""
    ddp = import_lucidrains()
    state = torch.load(lucidrains_run / "results" / "model-2.pt", weights_only=True)["ema"]
    theirs_model = ddp.GaussianDiffusion(ddp.Unet(**LUCIDRAINS_UNET), image_size=16, timesteps=LUCIDRAINS_T,
                                         sampling_timesteps=LUCIDRAINS_S, objective="pred_v", beta_schedule="sigmoid")
    theirs_model.load_state_dict({k[len("ema_model."):]: v for k, v in state.items() if k.startswith("ema_model.")})
    theirs_model.eval()
    torch.manual_seed(7)
    theirs = theirs_model.ddim_sample((6, 1, 16, 16))  # in [0, 1]: the package unnormalizes
    torch.manual_seed(7)
    x = torch.randn(6, 1, 16, 16)  # ddim_sample's first draw

    ckpt = load_checkpoint(lucidrains_ckpt[0])
    d = ckpt.config.diffusion
    times = torch.linspace(-1, LUCIDRAINS_T - 1, steps=LUCIDRAINS_S + 1).int().tolist()
    ts = np.array([t for t in reversed(times) if t >= 0])
    with torch.no_grad():
        ours = sample_ddim(ckpt.model, x, alphas_cumprod(d), ts, clip=d.clip_range, prediction=d.prediction)
    err = float(((ours + 1) / 2 - theirs).abs().max())
    print(f"lucidrains DDIM x{LUCIDRAINS_S}: max |ours - theirs| = {err:.2e}")
    assert err <= 1e-4
    assert float(theirs.std()) > 0.05  # a real image batch, not a constant


def test_lucidrains_spec_must_agree_with_the_checkpoint(lucidrains_run, tmp_path):
    spec = _lucidrains_spec(lucidrains_run, "eps.toml", diffusion='prediction = "epsilon"')
    proc = cli_in_process("import", spec, "--out", tmp_path / "o")
    assert_one_line_error(proc, "diffusion.prediction 'epsilon' contradicts the checkpoint buffers ('v')")
    spec = _lucidrains_spec(lucidrains_run, "cos.toml", diffusion=f'schedule = "cosine"\ntimesteps = {LUCIDRAINS_T}')
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o"),
                          "the [diffusion] schedule's betas differ from those of the checkpoint buffers")
    _no_output(tmp_path / "o")
    # Saying what it trained with is accepted, and then kept as the named schedule.
    spec = _lucidrains_spec(lucidrains_run, "same.toml",
                            diffusion=f'schedule = "sigmoid"\ntimesteps = {LUCIDRAINS_T}\nprediction = "v"')
    assert cli_in_process("import", spec, "--out", tmp_path / "o").returncode == 0
    assert Artifact.load(tmp_path / "o").config["diffusion"]["schedule"] == "sigmoid"


def test_lucidrains_later_stages(lucidrains_ckpt, tmp_path):
    out = lucidrains_ckpt[0]
    proc = cli_in_process("sample", out, "--n", 4, "--steps", 5, "--out", tmp_path / "s.png")
    assert proc.returncode == 0 and (tmp_path / "s.png").is_file(), proc.stderr
    proc = cli_in_process("inspect", out, "--json", tmp_path / "i.json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["arch"] == "imported" and info["macs"] > 0 and info["nfe_per_call"] == 1
    assert "imported lucidrains network" in info["solver_summary"]
    # A lucidrains Unet has no ODE solve: it exports as it is (no unroll), then quantizes and benches beside the
    # checkpoint on torch.
    proc = cli_in_process("export", out, "--out", tmp_path / "onnx")
    assert proc.returncode == 0, proc.stderr
    assert Artifact.load(tmp_path / "onnx").manifest["verification"]["rel_err"] <= 1e-4
    # Seconds-fast quantize settings (the CLI path of quantize is tested in tests/test_quantize.py).
    quick = QuantizeConfig(target="cpu", calibration=CalibrationConfig(n_images=4, sampler_steps=16, method="minmax"),
                           tolerance=0.5, select="fewest-float", val_n=16, drift_samples=4, compare_fp16=False)
    assert quantize_int8(tmp_path / "onnx", quick, tmp_path / "int8", progress=False).kind == "onnx-int8"
    proc = cli_in_process("bench", out, "--compare", tmp_path / "onnx", "--compare", tmp_path / "int8",
                          "--min-iters", 2, "--min-seconds", 0.01, "--rounds", 1, "--sampler-steps", 2,
                          "--json", tmp_path / "b2.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "b2.json").read_text())["results"]
    assert [r["runtime"] for r in rows] == ["torch", "onnxruntime", "onnxruntime"]
    assert all(r["p50_ms"] > 0 for r in rows) and rows[0]["params"] == info["params"]


@pytest.mark.parametrize("objective, min_snr, prediction", [
    ("pred_noise", False, "epsilon"), ("pred_x0", False, "sample"), ("pred_v", True, None)])
def test_lucidrains_objective_from_loss_weight(objective, min_snr, prediction, tmp_path):
    """A GaussianDiffusion state dict (the Trainer's "model" entry: Unet under "model.", buffers beside it)."""
    ddp = import_lucidrains()
    torch.manual_seed(0)
    diffusion = ddp.GaussianDiffusion(ddp.Unet(**LUCIDRAINS_UNET), image_size=16, timesteps=50, objective=objective,
                                      beta_schedule="cosine", min_snr_loss_weight=min_snr)
    torch.save({"model": diffusion.state_dict()}, tmp_path / "model.pt")
    spec = _lucidrains_spec(tmp_path, file="model.pt", key="model", prefix="model.")
    proc = cli_in_process("import", spec, "--out", tmp_path / "o")
    if prediction is None:  # min-SNR weighting hides the objective: the spec must say it
        assert_one_line_error(proc, "cannot tell the prediction type (loss_weight matches no objective without "
                                    "min-SNR weighting): set [diffusion] prediction")
        _no_output(tmp_path / "o")
        spec = _lucidrains_spec(tmp_path, file="model.pt", key="model", prefix="model.", diffusion='prediction = "v"')
        proc = cli_in_process("import", spec, "--out", tmp_path / "o")
        prediction = "v"
    assert proc.returncode == 0, proc.stderr
    d = Artifact.load(tmp_path / "o").config["diffusion"]
    assert d["prediction"] == prediction and d["schedule"] == "explicit" and d["timesteps"] == 50


def test_self_conditioned_lucidrains_unet_is_refused(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    spec = _write(tmp_path / "s.toml", '[network]\nlucidrains = { dim = 8, channels = 1, self_condition = true }\n'
                                       '[weights]\nfile = "w.pt"\n[image]\nsize = 16\n')
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o"), "self_condition=True")
    _no_output(tmp_path / "o")


# -- diffusers -----------------------------------------------------------------------------------------------------

DIFFUSERS_CASES = {  # scheduler settings → what they become
    "cosine-v": ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}, "cosine", "v"),
    "sigmoid-eps": ({"beta_schedule": "sigmoid", "beta_end": 0.03}, "explicit", "epsilon"),
    "scaled-x0": ({"beta_schedule": "scaled_linear", "beta_end": 0.012, "prediction_type": "sample"},
                  "scaled_linear", "sample"),
}


def _diffusers_pipeline(folder: Path, scheduler: dict):
    """A tiny UNet2DModel and a DDPMScheduler saved as DDPMPipeline saves them (unet/, scheduler/)."""
    ensure_torchvision_imports()  # diffusers imports torchvision (a CUDA build beside the CPU torch here)
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with torch.no_grad():  # diffusers zero-initialises nothing we rely on, but make the output clearly non-trivial
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **scheduler)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(str(folder))
    return unet.eval(), sched


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_diffusers_samples_equal_ddim_scheduler(case, tmp_path):
    settings, schedule, prediction = DIFFUSERS_CASES[case]
    unet, sched = _diffusers_pipeline(tmp_path / "ddpm", settings)
    import diffusers
    spec = _write(tmp_path / "spec.toml", '[network]\ndiffusers = "ddpm/unet"\n')
    proc = cli_in_process("import", spec, "--out", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    print(f"diffusers import ({case}): {_import_seconds(proc):.2f} s")
    art = Artifact.load(tmp_path / "m")
    rec = art.manifest["import"]
    assert {r["role"] for r in rec["inputs"]} == {"spec", "weights", "unet_config", "scheduler_config"}
    assert rec["diffusion_from"]["prediction"] == "scheduler_config"
    ckpt = load_checkpoint(art)
    d = ckpt.config.diffusion
    assert (d.schedule, d.prediction, d.timesteps, d.clip_denoised) == (schedule, prediction, 1000, True)
    np.testing.assert_allclose(alphas_cumprod(d), sched.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-7)

    # DDIMScheduler knows no "sigmoid" beta_schedule: it gets the DDPMScheduler's betas as trained_betas
    extra = {"trained_betas": sched.betas.numpy().tolist()} if settings["beta_schedule"] == "sigmoid" else {}
    ddim = diffusers.DDIMScheduler.from_config(sched.config, **extra)
    ddim.set_timesteps(10)
    x0 = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    theirs = x0.clone()
    with torch.no_grad():
        for t in ddim.timesteps:
            # use_clipped_model_output: ε re-derived from the clipped x̂0, as DDIM (and our sampler) does
            theirs = ddim.step(unet(theirs, t).sample, t, theirs, eta=0.0, use_clipped_model_output=True).prev_sample
        ours = sample_ddim(ckpt.model, x0.clone(), alphas_cumprod(d), ddim.timesteps.numpy(), clip=d.clip_range,
                           prediction=d.prediction)
    err = float((ours - theirs).abs().max())
    print(f"diffusers ({case}) DDIM x10: max |ours - theirs| = {err:.2e}")
    assert err <= 1e-4 and float(theirs.std()) > 0.05


def test_diffusers_unsupported_scheduler_settings_are_refused(tmp_path):
    _diffusers_pipeline(tmp_path / "ddpm", {})
    path = tmp_path / "ddpm" / "scheduler" / "scheduler_config.json"
    base = json.loads(path.read_text())
    spec = _write(tmp_path / "spec.toml", '[network]\ndiffusers = "ddpm/unet"\n')
    for change, match in (({"thresholding": True}, "thresholding"),
                          ({"prediction_type": "flow"}, "prediction_type 'flow' is not supported"),
                          ({"beta_schedule": "quadratic"}, "beta_schedule 'quadratic' is not supported"),
                          ({"variance_type": "learned_range"}, "learned variance")):
        path.write_text(json.dumps(base | change))
        assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o"), match)
        _no_output(tmp_path / "o")
    # The spec may not contradict the scheduler; it may switch clipping off.
    path.write_text(json.dumps(base))
    spec.write_text(spec.read_text() + '[diffusion]\nprediction = "v"\n')
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o"),
                          "diffusion.prediction 'v' contradicts the scheduler_config ('epsilon')")
    spec.write_text(spec.read_text().replace('prediction = "v"', "clip_denoised = false"))
    assert cli_in_process("import", spec, "--out", tmp_path / "o").returncode == 0
    rec = Artifact.load(tmp_path / "o").manifest["import"]["diffusion_from"]
    assert rec["clip_denoised"] == "spec" and rec["prediction"] == "scheduler_config"


# -- the user's own code (a factory) -------------------------------------------------------------------------------


def _plainnet_weights(path: Path, **kwargs) -> Path:
    sys.path.insert(0, str(BYOM))
    try:
        import plainnet
    finally:
        sys.path.remove(str(BYOM))
    torch.manual_seed(0)
    torch.save(plainnet.build(**kwargs).state_dict(), path)
    return path


def _factory_spec(folder: Path, factory="plainnet:build", kwargs="{ width = 8 }", weights="w.pt", extra="") -> Path:
    return _write(folder / "spec.toml", f'[network]\nfactory = "{factory}"\nkwargs = {kwargs}\n'
                  f'[weights]\nfile = "{weights}"\n[image]\nsize = 8\nchannels = 1\n{extra}')


def _odeunet(path: Path, **kwargs):
    """tests/byom/odeunet.py's model (torchdiffeq inside: rk4, adjoint dopri5, rk4 at three output times), saved."""
    sys.path.insert(0, str(BYOM))
    try:
        import odeunet
    finally:
        sys.path.remove(str(BYOM))
    torch.manual_seed(0)
    net = odeunet.build(**kwargs)
    torch.save(net.state_dict(), path)
    return net.eval()


def test_factory_import_and_later_stages(tmp_path):
    net = _odeunet(tmp_path / "w.pt", image_size=8, width=8, emb_dim=16)
    spec = _factory_spec(tmp_path, factory="odeunet:build", kwargs="{ image_size = 8, width = 8, emb_dim = 16 }",
                         extra='[diffusion]\nschedule = "cosine"\ntimesteps = 200\n')
    proc = cli_in_process("import", spec, "--out", tmp_path / "m", "--code-dir", BYOM)
    assert proc.returncode == 0, proc.stderr
    print(f"factory (odeunet) import: {_import_seconds(proc):.2f} s")
    art = Artifact.load(tmp_path / "m")
    m, rec = art.config["model"], art.manifest["import"]
    assert m["factory"] == "odeunet:build" and m["code_dir"] == str(BYOM)
    assert m["code_sha256"] == _sha256(BYOM / "odeunet.py")
    assert {r["role"]: r["path"] for r in rec["inputs"]}["code"] == str(BYOM / "odeunet.py")
    assert art.config["diffusion"]["schedule"] == "cosine" and rec["diffusion_from"]["prediction"] == "default"
    # The weights are the file's, exactly, and the network computes what the user's own does.
    ckpt = load_checkpoint(art)
    for k, v in torch.load(tmp_path / "w.pt", weights_only=True).items():
        assert torch.equal(ckpt.model.net.state_dict()[k], v)
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([5, 150])
    with torch.no_grad():
        assert torch.equal(ckpt.model(x, t), net(x, t))

    assert cli_in_process("sample", art.path, "--n", 4, "--steps", 3, "--out", tmp_path / "s.png").returncode == 0
    proc = cli_in_process("inspect", art.path, "--json", tmp_path / "i.json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "i.json").read_text())
    net.reset_nfe()
    with torch.no_grad():
        net(x[:1], t[:1])
    # the torchdiffeq evaluations inside the user's network, as its own counter sees them (dopri5 included)
    assert info["nfe_per_call"] == net.nfe > 1 and info["ode_blocks"] == 3
    assert "torchdiffeq inside the imported factory network (3 solve(s) per call)" in proc.stdout
    proc = cli_in_process("bench", art.path, "--runtime", "torch", "--min-iters", 2, "--min-seconds", 0.01,
                          "--rounds", 1, "--sampler-steps", 2)
    assert proc.returncode == 0, proc.stderr
    proc = cli_in_process("evaluate", art.path, "--n", 16, "--steps", 2, "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    assert np.isfinite(json.loads((tmp_path / "e.json").read_text())["fid"])


def test_changed_factory_code_is_refused(tmp_path):
    code = _mkdir(tmp_path / "code")
    shutil.copy(BYOM / "plainnet.py", code / "plainnet_edited.py")
    _plainnet_weights(tmp_path / "w.pt", width=8)
    spec = _factory_spec(tmp_path, factory="plainnet_edited:build")
    assert cli_in_process("import", spec, "--out", tmp_path / "m", "--code-dir", code).returncode == 0
    load_checkpoint(tmp_path / "m")  # builds: the code is as imported
    with (code / "plainnet_edited.py").open("a") as fh:
        fh.write("\nprint('this line was added after the import')\n")
    with pytest.raises(ConfigError, match=r"code file .*plainnet_edited.py changed since import"):
        load_checkpoint(tmp_path / "m")
    assert_one_line_error(cli_in_process("sample", tmp_path / "m", "--n", 2, "--out", tmp_path / "s.png"),
                          "changed since import")
    assert not (tmp_path / "s.png").exists()


def test_pickled_objects_are_refused_unrun(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save({"inp.weight": torch.zeros(8, 1, 3, 3), "payload": Payload()}, tmp_path / "evil.pt")
    spec = _factory_spec(tmp_path, weights="evil.pt")
    proc = cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM)
    assert_one_line_error(proc, "holds Python objects, not only tensors; it was refused without being run")
    assert not marker.exists()
    _no_output(tmp_path / "o")
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what a plain unpickle would have done
    assert marker.is_dir()


@pytest.mark.parametrize("spec_args, match", [
    ({"factory": "nosuchmodule:build"}, "cannot find module 'nosuchmodule'"),
    ({"factory": "plainnet:nope"}, "has no callable 'nope'"),
    ({"factory": "plainnet"}, 'network.factory must be "package.module:callable"'),
    ({"kwargs": "{ depth = 3 }"}, "plainnet:build rejected its arguments {'depth': 3}"),
    ({"kwargs": "{ width = 16 }"}, ("the weights do not fit the network (6 tensors for 6): 5 of the wrong shape "
                                    "(inp.weight: (8, 1, 3, 3) in the file, (16, 1, 3, 3) in the network, ...)")),
    ({"weights": "missing.pt"}, "the weights do not fit the network (5 tensors for 6): 1 missing (out.bias)"),
    ({"weights": "extra.pt"}, "1 unexpected (head.weight)"),
    ({"weights": "no.pt"}, "weights.file"),
    ({"weights": "text.pt"}, "is not a torch state-dict file that loads without running code"),
    ({"weights": "w.safetensors"}, "is not readable safetensors"),
    ({"extra": '[diffusion]\nschedule = "quadratic"\n'}, "diffusion.schedule 'quadratic' is not one of"),
    ({"extra": '[diffusion]\nprediction = "score"\n'}, "diffusion.prediction 'score' is not one of"),
    ({"extra": '[diffusion]\ntimesteps = "many"\n'}, "diffusion.timesteps: expected an integer"),
    ({"extra": '[weights2]\nfile = "w.pt"\n'}, "unknown table [weights2]"),
    ({"extra": '[data]\nname = "imagenet"\n'}, "dataset 'imagenet' is not one of"),
    ({"extra": '[data]\nname = "cifar10"\n'}, "dataset cifar10 has 3 channel(s), the model 1"),
])
def test_bad_specs_are_one_line_errors_without_output(spec_args, match, tmp_path):
    _plainnet_weights(tmp_path / "w.pt", width=8)
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "out.bias"}, tmp_path / "missing.pt")
    torch.save(state | {"head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    (tmp_path / "text.pt").write_text("not weights\n")
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 7)
    spec = _factory_spec(tmp_path, **spec_args)
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM), match)
    _no_output(tmp_path / "o")


def test_unknown_keys_and_key_paths_are_named(tmp_path):
    _plainnet_weights(tmp_path / "w.pt", width=8)
    torch.save({"ema": torch.load(tmp_path / "w.pt", weights_only=True), "step": 3}, tmp_path / "nested.pt")
    cases = [
        ('[network]\nfactory = "plainnet:build"\nwidth = 8\n', "unknown config key network.width for NetworkSpec"),
        ('[network]\nfactory = "plainnet:build"\n[weights]\nfile = "w.pt"\nkeyy = "ema"\n[image]\nsize = 8\n'
         + 'channels = 1\n', "unknown config key weights.keyy for WeightsSpec; valid keys: file, key, prefix"),
        ('[network]\nfactory = "plainnet:build"\nlucidrains = { dim = 8 }\n',
         "[network] needs exactly one of factory, diffusers, lucidrains; got factory, lucidrains"),
        ('[network]\nfactory = "plainnet:build"\nkwargs = { width = 8 }\n[weights]\nfile = "nested.pt"\n'
         + 'key = "emma"\n[image]\nsize = 8\nchannels = 1\n', "weights.key 'emma': no key 'emma' (there: ema, step)"),
        ('[network]\nfactory = "plainnet:build"\nkwargs = { width = 8 }\n[weights]\nfile = "nested.pt"\n'
         + 'key = "ema"\nprefix = "model."\n[image]\nsize = 8\nchannels = 1\n',
         "no tensor key starts with weights.prefix 'model.' (keys there start with: inp., time., out.)"),
        ('[network]\nfactory = "plainnet:build"\n[weights]\nfile = "w.pt"\n[image]\nsize = 8\n',
         "a factory network needs [image] size and channels"),
    ]
    for text, match in cases:
        spec = _write(tmp_path / "spec.toml", text)
        assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM), match)
        _no_output(tmp_path / "o")
    # The nested checkpoint with the right key path imports, and its step is kept.
    spec = _write(tmp_path / "spec.toml", cases[3][0].replace('"emma"', '"ema"'))
    assert cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM).returncode == 0
    assert Artifact.load(tmp_path / "o").manifest["train_step"] == 3


def test_import_error_through_the_real_entry_point(tmp_path):
    spec = _write(tmp_path / "spec.toml", '[network]\nfactory = "plainnet:build"\n[weights]\nfile = "w.pt"\n')
    proc = cli_subprocess("import", spec, "--out", tmp_path / "o")
    assert_one_line_error(proc, "weights.file")
    _no_output(tmp_path / "o")


def test_explicit_betas_file_and_data_range(tmp_path):
    _plainnet_weights(tmp_path / "w.pt", width=8)
    betas = np.linspace(1e-3, 0.05, 40)
    np.save(tmp_path / "betas.npy", betas)
    np.savetxt(tmp_path / "betas.txt", betas)
    for name in ("betas.npy", "betas.txt"):
        spec = _factory_spec(tmp_path, extra=f'[diffusion]\nbetas_file = "{name}"\ndata_range = [0, 1]\n'
                                             'prediction = "sample"\nclip_denoised = false\n')
        out = tmp_path / f"m-{name}"
        proc = cli_in_process("import", spec, "--out", out, "--code-dir", BYOM)
        assert proc.returncode == 0, proc.stderr
        d = load_checkpoint(out).config.diffusion
        assert (d.schedule, d.timesteps, d.data_range, d.prediction, d.clip_denoised) == \
            ("explicit", 40, (0.0, 1.0), "sample", False)
        np.testing.assert_array_equal(np.array(d.betas), betas)
        roles = {r["role"] for r in Artifact.load(out).manifest["import"]["inputs"]}
        assert roles == {"spec", "weights", "code", "betas"}
    spec = _factory_spec(tmp_path, extra='[diffusion]\nbetas_file = "betas.npy"\ntimesteps = 40\n')
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM),
                          "diffusion.betas_file sets the betas: drop timesteps/beta_start/beta_end")
    np.save(tmp_path / "bad.npy", np.array([0.1, 1.5]))
    spec = _factory_spec(tmp_path, extra='[diffusion]\nbetas_file = "bad.npy"\n')
    assert_one_line_error(cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM),
                          "diffusion.betas must all lie in (0, 1)")
    _no_output(tmp_path / "o")


# -- the pipeline's load stage -------------------------------------------------------------------------------------


def test_pipeline_load_stage_imports(tmp_path, monkeypatch):
    _plainnet_weights(tmp_path / "w.pt", width=8)
    _factory_spec(tmp_path)
    recipe = _write(tmp_path / "r.toml", f'[[stage]]\nstage = "load"\nname = "model"\nspec = "spec.toml"\n'
                                         f'code_dir = "{BYOM}"\n'
                                         '[[stage]]\nstage = "bench"\nname = "bench"\nmin_iters = 2\n'
                                         'min_seconds = 0.01\nrounds = 1\nimage_reps = 1\nsampler_steps = 2\n')
    monkeypatch.chdir(tmp_path)
    proc = cli_in_process("pipeline", recipe, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    art = Artifact.load(tmp_path / "run" / "model", kinds=["checkpoint"])
    assert art.manifest["stage"] == "import" and not (tmp_path / "run" / "model").is_symlink()
    assert "skipped" in cli_in_process("pipeline", recipe, "--out", tmp_path / "run").stdout
    # New weights: the stage's fingerprint changes, so it runs again.
    _plainnet_weights(tmp_path / "w.pt", width=8, channels=1)
    torch.save({k: v + 1 for k, v in torch.load(tmp_path / "w.pt", weights_only=True).items()}, tmp_path / "w.pt")
    proc = cli_in_process("pipeline", recipe, "--out", tmp_path / "run")
    assert "model (load): running" in proc.stdout
    assert Artifact.load(tmp_path / "run" / "model").manifest["id"] != art.manifest["id"]
    # The same tables inline; a bad one is refused when the recipe is planned.
    inline = _write(tmp_path / "inline.toml",
                    f'[[stage]]\nstage = "load"\n[stage.network]\nfactory = "plainnet:build"\n'
                    f'code_dir = "{BYOM}"\nkwargs = {{ width = 8 }}\n[stage.weights]\nfile = "w.pt"\n'
                    '[stage.image]\nsize = 8\nchannels = 1\n[stage.diffusion]\nprediction = "score"\n')
    assert_one_line_error(cli_in_process("pipeline", inline, "--out", tmp_path / "run2"),
                          "diffusion.prediction 'score' is not one of")
    assert not (tmp_path / "run2").exists()
    inline.write_text(inline.read_text().replace('prediction = "score"', 'prediction = "v"'))
    assert cli_in_process("pipeline", inline, "--out", tmp_path / "run2").returncode == 0
    assert Artifact.load(tmp_path / "run2" / "load").config["diffusion"]["prediction"] == "v"


def test_half_precision_runs_code_that_makes_float32_tensors(tmp_path):
    """plainnet (like lucidrains' Unet) builds its timestep embedding in float32: cast to fp16 as the torch runner
    casts, the bare network fails; the imported model runs it under autocast, close to float32."""
    _plainnet_weights(tmp_path / "w.pt", width=8)
    proc = cli_in_process("import", _factory_spec(tmp_path), "--out", tmp_path / "m", "--code-dir", BYOM)
    assert proc.returncode == 0
    model = load_checkpoint(tmp_path / "m").model
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 50])
    with torch.no_grad():
        full = model(x, t)
        model.half()
        with pytest.raises(RuntimeError, match="same dtype"):
            model.net(x.half(), t)
        half = model(x.half(), t)
    assert half.dtype == torch.float16 and float((half.float() - full).abs().max()) < 1e-2


def test_a_weights_file_too_big_for_this_machine_is_refused_before_it_is_read(tmp_path):
    """An imported network's size is unknown until its factory runs; its weights file's size bounds the memory
    needed (read whole, then held again by the network): a sparse file as big as this machine's memory is refused
    with the estimate, before it is hashed or read."""
    from cunet_edge.limits import machine_memory_bytes

    size = machine_memory_bytes()
    with open(tmp_path / "w.pt", "wb") as f:
        f.truncate(size)  # sparse: takes no disk
    spec = _factory_spec(tmp_path)
    proc = cli_in_process("import", spec, "--out", tmp_path / "o", "--code-dir", BYOM)
    assert_one_line_error(proc, f"importing weights file {tmp_path / 'w.pt'} needs at least ")
    assert f"(its {size} bytes read whole, and the network built holds them again); this machine has" in proc.stderr
    _no_output(tmp_path / "o")
