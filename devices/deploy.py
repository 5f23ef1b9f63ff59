"""Deploy bundles: an ONNX artifact made self-contained for one board, optionally pushed and run over ssh.

A bundle is an artifact (kind "deploy-bundle") that needs only Python >= 3.8, numpy and
TensorRT (+ cuda-python) or ONNX Runtime on the board: the model, the diffusion schedule, a
verbatim copy of the numpy sampler, `run.py` (selfcheck / sample / bench), `build_engine.py`
(TensorRT Python API) with `build_engine.sh` (the same build through trtexec), and seeded
self-check inputs with the outputs ONNX Runtime gives on this CPU. The board-side scripts are
static files in `bundle/`; everything device-specific goes into `bundle.json`.

Self-check tolerances (relative error ||eps - eps_ref|| / ||eps_ref|| of the board's engine
against ONNX Runtime CPU at deploy time) are the drift a correct engine shows: fp32 1e-3 (the
fp32 build turns TF32 off), fp16 2e-2 (half-precision accumulation), int8 5e-2 (TensorRT's own
INT8 kernels and layer fusions differ from ORT's reference Q/DQ arithmetic).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..artifact import Artifact, ArtifactWriter, MANIFEST, check_output_path, write_atomic
from ..checkpoint import read_train_config
from ..config import check_positive, to_dict
from ..diffusion import alphas_cumprod
from ..errors import BackendMissingError, ConfigError, CunetEdgeError, OutputPathError
from ..export.tensorrt import EngineConfig, check_int8_target, trtexec_command
from ..export.trt_compat import check_tensorrt_compat
from ..kinds import STAGE_IO
from ..quantize.lint import assert_tensorrt_qdq
from ..records import SOLVER, precision_of
from .profiles import check_request, load_profile
from ..limits import check_seed

__all__ = [
    "BUNDLE_KIND",
    "TOLERANCES",
    "DeployConfig",
    "SshConfig",
    "check_host",
    "deploy",
    "remote_commands",
    "run_remote",
    "tarball_path",
]

BUNDLE_KIND = "deploy-bundle"
TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2}
TEMPLATE_DIR = Path(__file__).parent / "bundle"
SCRIPTS = ("run.py", "build_engine.py", "cudamem.py")
MIN_PYTHON = (3, 8)
# USER@HOST: a POSIX user name and a DNS name or IPv4 address (an ~/.ssh/config alias is a DNS-like name).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_.-]{{0,31}}@{_LABEL}(?:\.{_LABEL})*")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
REMOTE_ROOT = "cunet-edge-bundles"


@dataclass(frozen=True)
class DeployConfig:
    """What goes into a bundle. `selfcheck_n` seeded inputs, timesteps spread over the schedule."""

    device: str
    tarball: bool = True
    selfcheck_n: int = 8
    seed: int = 0
    workspace_mb: int = 1024
    max_batch: int = 16

    def __post_init__(self):
        check_seed(self.seed)
        for name in ("selfcheck_n", "workspace_mb", "max_batch"):
            check_positive(name, getattr(self, name))


def tarball_path(out: str | Path) -> Path:
    """The .tar.gz written beside bundle directory `out`."""
    out = Path(out)
    return out.with_name(out.name + ".tar.gz")


def _check_device(profile, art: Artifact) -> str:
    """Refuse what the board cannot run, before any work; return the artifact's precision."""
    precision = precision_of(art.manifest)
    check_request(profile, precision=precision, model_bytes=art.file("model.onnx").stat().st_size)
    if profile.python and tuple(int(p) for p in profile.python.split(".")[:2]) < MIN_PYTHON:
        raise ConfigError(f"{profile.display_name} ({profile.name}) ships Python {profile.python}; the bundle's "
                          f"run.py needs Python >= {'.'.join(map(str, MIN_PYTHON))} (JetPack 5 or later)")
    if precision not in TOLERANCES:
        raise ConfigError(f"precision {precision!r} of {art.path} has no self-check tolerance "
                          f"(known: {', '.join(TOLERANCES)})")
    _check_tensorrt(profile, art, precision)
    return precision


def _check_tensorrt(profile, art: Artifact, precision: str) -> None:
    """The checks `export --format tensorrt` and `quantize --target tensorrt` make, for the board's TensorRT.

    The ONNX parser's coverage (export/trt_compat.py) at the board's TensorRT version, and for INT8 the
    quantization target and the Q/DQ lint (quantize/lint.py): a `cpu`-target model is U8S8 with zero
    points, which TensorRT refuses.
    """
    onnx_file = art.file("model.onnx")
    check_int8_target(art)
    where = f"TensorRT {profile.tensorrt}" if profile.tensorrt else "TensorRT"
    report = check_tensorrt_compat(onnx_file, tensorrt_version=profile.tensorrt)
    if not report["ok"]:
        problems = "; ".join(report["problems"])
        raise ConfigError(f"{art.path} cannot be built with {where} on {profile.name}: {problems}")
    if precision != "int8":
        return
    try:
        assert_tensorrt_qdq(onnx_file, float_nodes=set(art.manifest.get("float_nodes") or ()))
    except ConfigError as e:
        raise ConfigError(f"{art.path}: the TensorRT Q/DQ lint found {e}") from None


def _image_spec(art: Artifact) -> tuple[list[int], int | None]:
    """(image shape C,H,W; static batch or None) from the signature, which must be x, t -> eps."""
    sig = art.manifest.get("signature") or {}
    if set(sig.get("inputs", {})) != {"x", "t"} or "eps" not in sig.get("outputs", {}):
        raise ConfigError(f"{art.path} is not a denoiser export (signature must be x, t -> eps)")
    shape = sig["inputs"]["x"]["shape"]
    if not all(isinstance(d, int) for d in shape[1:]):
        raise ConfigError(f"{art.path}: input x has dynamic dims other than the batch: {shape}")
    return list(shape[1:]), shape[0] if isinstance(shape[0], int) else None


def _engine_commands(profile, art: Artifact, precision: str, cfg: DeployConfig) -> list[list[str]]:
    """trtexec builds matching build_engine.py: the GPU build, and a DLA one when the board has DLA."""
    version = profile.tensorrt or "10.0"  # desktop profiles list none: assume a current TensorRT
    batch = art.manifest.get("batch", 1)
    kw = {"precision": precision, "signature": art.manifest["signature"], "tensorrt_version": version,
          "engine_file": "model.plan", "batch": batch}
    ecfg = EngineConfig(workspace_mb=cfg.workspace_mb, max_batch=max(cfg.max_batch, batch), tf32=False)
    cmds = [trtexec_command("model.onnx", ecfg, **kw)]
    if profile.dla_count:  # DLA takes static shapes: the ONNX's batch only
        weak = precision == "fp32" and int(version.split(".")[0]) < 11  # 11 has no FP16 flag for an fp32 ONNX
        dla = EngineConfig(workspace_mb=cfg.workspace_mb, min_batch=batch, max_batch=batch, dla_core=0, tf32=False,
                           builder_precision="fp16" if weak else "auto")
        try:
            cmds.append(trtexec_command("model.onnx", dla, **kw))
        except ConfigError:  # this model cannot go on the DLA with the board's TensorRT: no DLA line offered
            pass
    return cmds


def _build_script(cmds: list[list[str]], profile) -> str:
    lines = ["#!/bin/sh", "# The trtexec build of model.plan, for when the tensorrt Python module is missing.",
             f"# Generated for {profile.display_name}: TensorRT {profile.tensorrt or '>= 10 (assumed)'}.",
             "# On JetPack trtexec is /usr/src/tensorrt/bin/trtexec.", "set -e", 'cd "$(dirname "$0")"',
             'PATH="$PATH:/usr/src/tensorrt/bin"', shlex.join(cmds[0]) + ' "$@"']
    if len(cmds) > 1:
        lines += ["# DLA core 0 instead (FP16/INT8 layers on the DLA, the rest on the GPU):",
                  "# " + shlex.join(cmds[1])]
    return "\n".join(lines) + "\n"


def _selfcheck(path: Path, onnx_file: Path, sig: dict, shape: list[int], timesteps: int, static: int | None,
               cfg: DeployConfig) -> None:
    """Seeded inputs (t spread over the schedule) and the eps ONNX Runtime computes for them on CPU."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendMissingError("onnxruntime", "pip install 'cunet-edge[onnx]'") from None

    n = -(-cfg.selfcheck_n // static) * static if static else cfg.selfcheck_n
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    t = np.round(np.linspace(0, timesteps - 1, n)).astype(np.int64)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    b = static or n
    eps = np.concatenate([sess.run(["eps"], {"x": x[i:i + b].astype(sig["inputs"]["x"]["dtype"]),
                                             "t": t[i:i + b].astype(sig["inputs"]["t"]["dtype"])})[0]
                          for i in range(0, n, b)]).astype(np.float32)
    np.savez(path, x=x, t=t, eps=eps)


def _bundle_json(art: Artifact, profile, precision: str, shape, static, diffusion, cmds, cfg) -> dict:
    return {
        "format": 1, "device": profile.name, "precision": precision, "tolerance": TOLERANCES[precision],
        "tolerance_metric": "||eps - eps_ref|| / ||eps_ref|| vs ONNX Runtime CPU at deploy time",
        "image_shape": shape, "static_batch": static, "batch": art.manifest.get("batch", 1),
        "clip_denoised": bool(diffusion.clip_denoised), "timesteps": diffusion.timesteps,
        "prediction": diffusion.prediction, "data_range": list(diffusion.data_range),
        "schedule": {"file": "schedule.npy", "what": "alphas_cumprod (float64)", "kind": diffusion.schedule},
        "signature": art.manifest["signature"], "solver": art.manifest.get(SOLVER),
        "model_cost": art.manifest.get("model_cost"), "source_id": art.manifest.get("id"),
        "tensorrt_version": profile.tensorrt, "jetpack": profile.jetpack, "python_min": "3.8",
        "engine": {"workspace_mb": cfg.workspace_mb, "min_batch": 1, "max_batch": max(cfg.max_batch, 1)},
        "trtexec": cmds[0],
    }


def _readme(info: dict, profile) -> str:
    text = (TEMPLATE_DIR / "README.txt").read_text()
    return Template(text).substitute(
        display_name=profile.display_name, device=profile.name, precision=info["precision"],
        image_shape="x".join(map(str, info["image_shape"])), source_id=info["source_id"],
        jetpack=profile.jetpack or "-", tensorrt=profile.tensorrt or "-", tolerance=f"{info['tolerance']:g}")


def _copy_sources(d: Path, art: Artifact, profile) -> None:
    from importlib import resources

    shutil.copy2(art.file("model.onnx"), d / "model.onnx")
    shutil.copy2(art.file(MANIFEST), d / "source_manifest.json")
    (d / "device.json").write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    sampler = resources.files("cunet_edge.runtimes").joinpath("numpy_sampler.py")
    (d / "sampler.py").write_bytes(sampler.read_bytes())  # verbatim: the tests run it as the board would
    for name in SCRIPTS:
        shutil.copy2(TEMPLATE_DIR / name, d / name)
    build_rules = resources.files("cunet_edge.export").joinpath("trt_build.py")
    (d / "trt_build.py").write_bytes(build_rules.read_bytes())  # verbatim, as sampler.py
    check = resources.files("cunet_edge.export").joinpath("trt_check.py")
    (d / "trt_check.py").write_bytes(check.read_bytes())  # build_engine.py checks its engine against ONNX Runtime
    jetson = resources.files("cunet_edge").joinpath("jetson.py")
    (d / "jetson.py").write_bytes(jetson.read_bytes())  # run.py bench records the power mode and clock lock


def deploy(artifact: str | Path, cfg: DeployConfig, out: str | Path) -> Artifact:
    """Stage: ONNX artifact -> deploy-bundle artifact for `cfg.device` (plus `<out>.tar.gz` if cfg.tarball)."""
    import numpy as np


    profile = load_profile(cfg.device)
    art = Artifact.load(artifact, kinds=STAGE_IO["deploy"].accepts)
    precision = _check_device(profile, art)
    shape, static = _image_spec(art)
    cmds = _engine_commands(profile, art, precision, cfg)
    out = check_output_path(out)
    if cfg.tarball and tarball_path(out).exists():
        raise OutputPathError(f"output {tarball_path(out)} already exists; choose a new path or remove it")
    diffusion = read_train_config(art).diffusion
    abar = alphas_cumprod(diffusion)
    with ArtifactWriter(out, kind=BUNDLE_KIND, stage="deploy", config=to_dict(cfg), parent=art) as w:
        _copy_sources(w.dir, art, profile)
        np.save(w.dir / "schedule.npy", abar)
        _selfcheck(w.dir / "selfcheck.npz", art.file("model.onnx"), art.manifest["signature"], shape,
                   len(abar), static, cfg)
        info = _bundle_json(art, profile, precision, shape, static, diffusion, cmds, cfg)
        (w.dir / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
        (w.dir / "build_engine.sh").write_text(_build_script(cmds, profile))
        (w.dir / "README.txt").write_text(_readme(info, profile))
        w.manifest.update(device=profile.name, precision=precision, tolerance=info["tolerance"],
                          signature=art.manifest["signature"], entry_points=["run.py", "build_engine.py"])
    if cfg.tarball:
        _write_tarball(w.artifact.path)
    return w.artifact


def _write_tarball(bundle: Path) -> Path:
    """`<bundle>.tar.gz` holding the folder (under its own name), written to a temporary name then renamed."""
    def pack(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(bundle, arcname=bundle.name)

    return write_atomic(tarball_path(bundle), pack)


def check_host(host: str) -> str:
    """Accept only USER@HOST: a plain user and a DNS name or IPv4 address (nothing a shell or ssh reads as options)."""
    if not isinstance(host, str) or not HOST_RE.fullmatch(host):
        raise ConfigError(f"host {host!r} is not USER@HOST (user [A-Za-z0-9_.-], host a DNS name or IPv4 address)")
    return host


# ssh options that make ssh run a local command: put those in ~/.ssh/config, not on this command line.
_COMMAND_OPTIONS = {"proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "remotecommand",
                    "match"}
_OPTION_RE = re.compile(r"([A-Za-z][A-Za-z0-9]{1,63})=([A-Za-z0-9_./:@,+~%-]{1,256})")
# A remote path (the bundle folder, the Python): no shell metacharacters, no leading '-' (ssh runs it in a shell).
_REMOTE_PATH_RE = re.compile(r"[A-Za-z0-9_./~+][A-Za-z0-9_./~+-]{0,255}")


@dataclass(frozen=True)
class SshConfig:
    """How to reach the board: port, identity file, extra `-o Key=Value` options, where to put bundles, which Python.

    Every value lands on an ssh/scp command line run without a local shell; the remote paths are read by the
    board's shell, so they are refused unless plain (no spaces, quotes, `$`, `;`, or a leading `-`).
    """

    port: int | None = None
    identity: str | None = None
    options: tuple[str, ...] = ()
    remote_dir: str = REMOTE_ROOT
    remote_python: str = "python3"

    def __post_init__(self):
        if self.port is not None and (isinstance(self.port, bool) or not isinstance(self.port, int)
                                      or not 1 <= self.port <= 65535):
            raise ConfigError(f"ssh port must be an integer in 1..65535, got {self.port!r}")
        if self.identity is not None:
            if not Path(self.identity).is_file():
                raise ConfigError(f"ssh identity file {self.identity} does not exist")
            if "\n" in self.identity:
                raise ConfigError(f"ssh identity path {self.identity!r} has a newline")
        for opt in self.options:
            m = _OPTION_RE.fullmatch(opt) if isinstance(opt, str) else None
            if not m:
                raise ConfigError(f"ssh option {opt!r} is not Key=Value (a plain value: letters, digits, _./:@,+~%-)")
            if m.group(1).lower() in _COMMAND_OPTIONS:
                raise ConfigError(f"ssh option {m.group(1)} runs a command; set it in ~/.ssh/config instead")
        for name in ("remote_dir", "remote_python"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _REMOTE_PATH_RE.fullmatch(value) or ".." in value.split("/"):
                raise ConfigError(f"{name.replace('_', ' ')} {value!r} must be a plain path "
                                  f"({_REMOTE_PATH_RE.pattern}, no '..')")


def _ssh_options(accept_new_host_key: bool, ssh: SshConfig | None = None) -> list[str]:
    """The user's options first: ssh takes the first value it reads for each option."""
    ssh = ssh or SshConfig()
    opts = [a for o in ssh.options for a in ("-o", o)]
    if ssh.port is not None:
        opts += ["-o", f"Port={ssh.port}"]  # -o Port: the same spelling for ssh and scp (-p / -P)
    if ssh.identity is not None:
        opts += ["-o", f"IdentityFile={Path(ssh.identity).resolve()}", "-o", "IdentitiesOnly=yes"]
    policy = "accept-new" if accept_new_host_key else "yes"
    return opts + ["-o", f"StrictHostKeyChecking={policy}", "-o", "BatchMode=yes"]


def remote_commands(bundle_dir: str | Path, host: str, *, accept_new_host_key: bool = False,
                    rsync: bool = True, bench_batch: int = 1, ssh: SshConfig | None = None) -> list[list[str]]:
    """The argument lists that copy a bundle to `host`, build and check the engine there, bench, fetch results.

    The remote folder is <remote_dir>/<bundle name> (default ~/cunet-edge-bundles/<bundle name>); results come
    back as `<bundle>.results.json` beside the bundle. The engine is built before selfcheck: boards with only
    TensorRT need it to check; on a board without the tensorrt module the build says so and is skipped, and
    run.py selfchecks and benches with ONNX Runtime.
    """
    check_host(host)
    ssh = ssh or SshConfig()
    bundle_dir = Path(bundle_dir)
    name = bundle_dir.name
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"bundle folder name {name!r} must match {NAME_RE.pattern} to be copied to a host")
    opts = _ssh_options(accept_new_host_key, ssh)
    root = ssh.remote_dir.rstrip("/") or "/"
    rdir = f"{root.rstrip('/')}/{name}"
    py = ssh.remote_python
    login = ["ssh", *opts, host]
    if rsync:
        copy = ["rsync", "-a", "-e", shlex.join(["ssh", *opts]), str(bundle_dir.resolve()), f"{host}:{root}/"]
    else:
        copy = ["scp", *opts, "-r", "-q", str(bundle_dir.resolve()), f"{host}:{root}/"]
    return [
        login + ["mkdir", "-p", root],
        copy,
        login + [py, f"{rdir}/build_engine.py", "--skip-without-tensorrt"],
        login + [py, f"{rdir}/run.py", "selfcheck"],
        login + [py, f"{rdir}/run.py", "bench", "--batch", str(int(bench_batch)), "--json", f"{rdir}/results.json"],
        ["scp", *opts, "-q", f"{host}:{rdir}/results.json", str(results_path(bundle_dir).resolve())],
    ]


def results_path(bundle_dir: str | Path) -> Path:
    bundle_dir = Path(bundle_dir)
    return bundle_dir.with_name(bundle_dir.name + ".results.json")


def run_remote(bundle_dir: str | Path, host: str, *, accept_new_host_key: bool = False, bench_batch: int = 1,
               ssh: SshConfig | None = None, runner=subprocess.run, echo=print) -> Path:
    """Run remote_commands one by one (no shell); the first failure is a one-line error naming the step."""
    missing = [tool for tool in ("ssh", "scp") if shutil.which(tool) is None]
    if missing:
        raise BackendMissingError(missing[0], "install the OpenSSH client (apt install openssh-client)")
    if results_path(bundle_dir).exists():
        raise OutputPathError(f"output {results_path(bundle_dir)} already exists; remove it first")
    cmds = remote_commands(bundle_dir, host, accept_new_host_key=accept_new_host_key,
                           rsync=shutil.which("rsync") is not None, bench_batch=bench_batch, ssh=ssh)
    for cmd in cmds:
        echo("$ " + shlex.join(cmd))
        proc = runner(cmd, check=False)
        if proc.returncode != 0:
            raise CunetEdgeError(f"step failed on {host} (exit {proc.returncode}): {shlex.join(cmd)}")
    return results_path(bundle_dir)
