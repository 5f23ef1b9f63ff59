"""Bring your own model, measured: three models trained by their own libraries, imported and taken to INT8.

1. `lucidrains`: denoising-diffusion-pytorch's `Unet` in `GaussianDiffusion` (its defaults: v-prediction,
   sigmoid schedule, T = 1000), trained by its own `Trainer`, which saves `results/model-N.pt`;
2. `diffusers`: a `UNet2DModel` + `DDPMScheduler` (cosine, ε-prediction), trained by a plain loop on the
   scheduler's `add_noise`, saved with `DDPMPipeline.save_pretrained`;
3. `odeunet`: tests/byom/odeunet.py, a neural-ODE U-Net written unlike ours (torchdiffeq inside: a closure rk4
   solve, an adjoint dopri5 solve over [0, 2], an rk4 solve at three output times), trained by a plain loop.

All on scikit-learn's digits at 16 px (nothing is downloaded). Each is then taken through one
`cunet-edge pipeline` recipe: load (= import the spec) → unroll (odeunet: rk4 x1) → export → quantize
(cpu) → bench, the torch model as imported beside the ONNX Runtime ones in one run. The table gives,
per model: import time, unrolled-vs-torchdiffeq error, ONNX-vs-PyTorch error, INT8 ε error and the ONNX
Runtime speed-ups over PyTorch eager.

    python benchmarks/byom.py --out runs/byom [--train-steps 300] [--ode-train-steps 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BYOM = Path(__file__).resolve().parent.parent / "tests" / "byom"


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/byom", help="work folder (models, specs, pipeline runs)")
    p.add_argument("--train-steps", type=int, default=300, help="training steps of the lucidrains and diffusers models")
    p.add_argument("--ode-train-steps", type=int, default=100,
                   help="training steps of odeunet (its adjoint dopri5 block costs ~3 s a step on 2 CPU cores)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--sampler-steps", type=int, default=50, help="DDIM steps of the per-image latency")
    p.add_argument("--json", help="where to write the results (default: OUT/result.json)")
    return p.parse_args(argv)


def _digits(size: int = 16):
    """scikit-learn's digits as a (N, 1, size, size) float tensor in [-1, 1], the same images our `digits` has."""
    from cunet_edge.data import DataConfig, load_images

    return load_images(DataConfig(name="digits", image_size=size), "train")[0]


def _train_lucidrains(root: Path, steps: int) -> Path:
    from PIL import Image

    from cunet_edge.compat import ensure_torchvision_imports

    ensure_torchvision_imports()  # PyPI's torchvision beside a CPU torch
    import denoising_diffusion_pytorch as ddp
    import torch

    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(_digits()):
        Image.fromarray(((x[0].numpy() + 1) * 127.5).round().astype("uint8")).save(images / f"{i}.png")
    torch.manual_seed(0)
    unet = ddp.Unet(dim=16, dim_mults=(1, 2), channels=1, attn_dim_head=16, attn_heads=2)
    diffusion = ddp.GaussianDiffusion(unet, image_size=16, timesteps=1000, sampling_timesteps=20)  # pred_v, sigmoid
    trainer = ddp.Trainer(diffusion, str(images), train_batch_size=32, train_num_steps=steps,
                          save_and_sample_every=steps, num_samples=4, results_folder=str(root / "results"),
                          calculate_fid=False, amp=False, augment_horizontal_flip=False)
    trainer.train()
    spec = root / "spec.toml"
    spec.write_text('[network]\nlucidrains = { dim = 16, dim_mults = [1, 2], channels = 1, attn_dim_head = 16, '
                    'attn_heads = 2 }\n[weights]\nfile = "results/model-1.pt"\nkey = "ema"\n'
                    'prefix = "ema_model.model."\n[image]\nsize = 16\n')
    return spec


def _fit(net, loss_fn, steps: int, lr: float = 2e-3) -> None:
    """The plain training loop a user writes: AdamW on seeded batches of digits."""
    import torch

    x0 = _digits()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = x0[torch.randint(0, x0.shape[0], (32,), generator=g)]
        loss = loss_fn(net, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _train_diffusers(root: Path, steps: int) -> Path:
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def loss_fn(net, x0, g):
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        return torch.nn.functional.mse_loss(net(sched.add_noise(x0, noise, t), t).sample, noise)

    _fit(unet, loss_fn, steps)
    diffusers.DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(str(root / "ddpm"))
    spec = root / "spec.toml"
    spec.write_text('[network]\ndiffusers = "ddpm/unet"\n')
    return spec


def _train_odeunet(root: Path, steps: int) -> Path:
    import torch

    sys.path.insert(0, str(BYOM))
    try:
        import odeunet
    finally:
        sys.path.remove(str(BYOM))
    from cunet_edge.diffusion import DiffusionConfig, alphas_cumprod, training_target

    abar = torch.tensor(alphas_cumprod(DiffusionConfig(schedule="cosine")), dtype=torch.float32)
    torch.manual_seed(0)
    net = odeunet.build(image_size=16, width=16)

    def loss_fn(net, x0, g):  # v-prediction on the cosine schedule
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        return torch.nn.functional.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t),
                                            training_target("v", x0, noise, abar[t]))

    _fit(net, loss_fn, steps)
    torch.save({"model": net.state_dict()}, root / "ckpt.pt")
    spec = root / "spec.toml"
    spec.write_text(f'[network]\nfactory = "odeunet:build"\ncode_dir = "{BYOM}"\n'
                    'kwargs = { image_size = 16, width = 16 }\n[weights]\nfile = "ckpt.pt"\nkey = "model"\n'
                    '[image]\nsize = 16\nchannels = 1\n[diffusion]\nprediction = "v"\nschedule = "cosine"\n')
    return spec


MODELS = {"lucidrains": _train_lucidrains, "diffusers": _train_diffusers, "odeunet": _train_odeunet}


def _recipe(spec: Path, unroll: bool, args) -> str:
    stages = [f'[pipeline]\nthreads = {args.threads}\n',
              f'[[stage]]\nstage = "load"\nname = "imported"\nspec = "{spec}"\n']
    parent = "imported"
    if unroll:
        stages.append('[[stage]]\nstage = "unroll"\nname = "unrolled"\nmethod = "rk4"\nsteps = 1\n')
        parent = "unrolled"
    stages.append(f'[[stage]]\nstage = "export"\nname = "onnx"\ninputs = ["{parent}"]\n')
    stages.append('[[stage]]\nstage = "quantize"\nname = "int8"\ntarget = "cpu"\n')
    timed = ["imported", "unrolled", "onnx", "int8"] if unroll else ["imported", "onnx", "int8"]
    stages.append(f'[[stage]]\nstage = "bench"\nname = "bench"\ninputs = {json.dumps(timed)}\n'
                  f'sampler_steps = {args.sampler_steps}\n')
    return "\n".join(stages)


def _figures(run: Path, unroll: bool) -> dict:
    def manifest(name):
        return json.loads((run / name / "manifest.json").read_text())

    imp, onnx, int8 = manifest("imported"), manifest("onnx"), manifest("int8")
    bench = json.loads((run / "bench" / "result.json").read_text())["results"]
    ms = {Path(r["artifact"]).name: r for r in bench}
    row = {
        "import_s": imp["import"]["seconds"],
        "params": imp["import"].get("params"),
        "onnx_rel_err": onnx["verification"]["rel_err"],
        "int8_eps_rel_err": int8["drift"]["eps_rel_err"],
        "p50_ms": {k: v["p50_ms"] for k, v in ms.items()},
        "image_ms": {k: v.get("image_latency_ms") for k, v in ms.items()},
    }
    if unroll:
        check = manifest("unrolled")["unroll_check"]
        row["unroll_max_abs_err_f64"] = check["max_abs_err_vs_torchdiffeq_fixed_grid"]
        row["unroll_rel_err_vs_own_solvers"] = check["rel_err_vs_imported_solvers"]
        row["nfe_per_call"] = manifest("unrolled")["solver"]["nfe_per_call"]
    eager = ms["imported"]["p50_ms"]
    row["ort_fp32_speedup"] = eager / ms["onnx"]["p50_ms"]
    row["ort_int8_speedup"] = eager / ms["int8"]["p50_ms"]
    return row


def main(argv=None) -> int:
    args = _parse(argv)
    out = Path(args.out).resolve()
    results = {}
    for name, train in MODELS.items():
        root = out / name
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        steps = args.ode_train_steps if name == "odeunet" else args.train_steps
        spec = train(root, steps)
        trained_s = time.perf_counter() - t0
        recipe = root / "recipe.toml"
        recipe.write_text(_recipe(spec, name == "odeunet", args))
        cmd = [sys.executable, "-m", "cunet_edge", "pipeline", str(recipe), "--out", str(root / "run"), "--no-progress"]
        print(f"[{name}] trained {steps} steps in {trained_s:.0f} s; {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        results[name] = _figures(root / "run", name == "odeunet") | {"train_steps": steps, "train_s": trained_s}
    print(f"\n{'model':11} {'import s':>8} {'unroll err (f64)':>16} {'ONNX rel err':>12} {'INT8 eps err':>12} "
          f"{'eager ms':>9} {'ORT fp32 x':>10} {'ORT int8 x':>10}")
    for name, r in results.items():
        unroll = f"{r['unroll_max_abs_err_f64']:.1e}" if "unroll_max_abs_err_f64" in r else "no solve"
        print(f"{name:11} {r['import_s']:8.2f} {unroll:>16} {r['onnx_rel_err']:12.1e} {r['int8_eps_rel_err']:12.3f} "
              f"{r['p50_ms']['imported']:9.2f} {r['ort_fp32_speedup']:10.2f} {r['ort_int8_speedup']:10.2f}")
    path = Path(args.json) if args.json else out / "result.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
