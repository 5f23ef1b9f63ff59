"""Deploy bundles: contents, tarball, board-side scripts without torch or cunet_edge, ssh commands, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

from cunet_edge.artifact import Artifact
from cunet_edge.errors import (
    ArtifactError,
    ConfigError,
    CunetEdgeError,
    OutputPathError,
)

DEVICE = "jetson-orin-nano-8gb"
BENCH_KEYS = {"runtime", "precision", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s", "peak_mem_mb",
              "image_latency_ms", "sampler_steps"}
# The board has neither torch nor cunet_edge: importing either inside the scripts must fail.
BOARD = ("import sys; sys.modules['torch'] = None; sys.modules['cunet_edge'] = None; import runpy; "
         "sys.argv = [{0!r}] + sys.argv[1:]; runpy.run_path({0!r}, run_name='__main__')")
PY38 = Path.home() / ".pyenv/versions/3.8.18/bin/python"


@pytest.fixture(scope="module")
def bundle(tiny_onnx, tmp_path_factory):
    from cunet_edge.devices.deploy import DeployConfig, deploy

    return deploy(tiny_onnx, DeployConfig(device=DEVICE, selfcheck_n=6), tmp_path_factory.mktemp("dep") / "b").path


@pytest.fixture
def cli(monkeypatch):
    """The real CLI group with `deploy` registered (registration itself lives in cunet_edge/cli/__init__.py)."""
    from cunet_edge import cli as cli_mod

    monkeypatch.setitem(cli_mod.COMMANDS, "deploy", "cunet_edge.cli.deploy:deploy")
    monkeypatch.setitem(cli_mod._SUMMARIES, "deploy", "Bundle an ONNX artifact for a board.")
    return run


def board(bundle_dir, script, *args, env=None):
    return subprocess.run([sys.executable, "-c", BOARD.format(script), *map(str, args)], cwd=bundle_dir,
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_bundle_holds_model_schedule_sampler_scripts_and_manifest(bundle, tiny_onnx):
    from cunet_edge.devices.profiles import load_profile
    from cunet_edge.export import trt_build
    from cunet_edge.runtimes import numpy_sampler

    from cunet_edge.checkpoint import read_train_config
    from cunet_edge.diffusion import alphas_cumprod

    src = Artifact.load(tiny_onnx)
    art = Artifact.load(bundle, kinds=["deploy-bundle"])  # verifies every file's hash
    assert set(art.manifest["files"]) == {
        "model.onnx", "source_manifest.json", "device.json", "sampler.py", "schedule.npy", "run.py",
        "build_engine.py", "trt_build.py", "build_engine.sh", "selfcheck.npz", "bundle.json", "README.txt",
        "jetson.py", "cudamem.py", "trt_check.py"}
    assert art.manifest["parent"]["id"] == src.manifest["id"] and art.manifest["device"] == DEVICE
    assert (bundle / "model.onnx").read_bytes() == src.file("model.onnx").read_bytes()
    assert json.loads((bundle / "source_manifest.json").read_text()) == src.manifest
    assert json.loads((bundle / "device.json").read_text()) == load_profile(DEVICE).to_dict()
    assert (bundle / "sampler.py").read_bytes() == Path(numpy_sampler.__file__).read_bytes()
    assert (bundle / "trt_build.py").read_bytes() == Path(trt_build.__file__).read_bytes()  # export's build rules
    assert (bundle / "jetson.py").read_bytes() == (Path(numpy_sampler.__file__).parents[1] / "jetson.py").read_bytes()
    diffusion = read_train_config(src).diffusion
    np.testing.assert_array_equal(np.load(bundle / "schedule.npy"), alphas_cumprod(diffusion))
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["image_shape"] == [1, 8, 8] and info["clip_denoised"] is diffusion.clip_denoised
    assert info["precision"] == "fp32" and info["tolerance"] == 1e-3 and info["static_batch"] is None
    check = np.load(bundle / "selfcheck.npz")
    assert check["x"].shape == (6, 1, 8, 8) and check["t"].min() == 0 and check["t"].max() == 999
    script = (bundle / "build_engine.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.plan --stronglyTyped" in script and "--noTF32" in script
    for cmd in ("build_engine.py", "run.py selfcheck", "run.py bench"):
        assert cmd in (bundle / "README.txt").read_text()


def test_tarball_holds_the_same_files(bundle):
    with tarfile.open(bundle.with_name(bundle.name + ".tar.gz")) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    on_disk = {f"{bundle.name}/{p.relative_to(bundle).as_posix()}": p.read_bytes() for p in bundle.rglob("*")
               if p.is_file()}
    assert members == on_disk


def test_selfcheck_passes_on_onnxruntime_without_torch_or_cunet_edge(bundle):
    proc = board(bundle, "run.py", "selfcheck", "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert "selfcheck passed" in proc.stdout


def test_bench_writes_the_bench_keys(bundle, tmp_path):
    out = tmp_path / "results.json"
    proc = board(bundle, "run.py", "bench", "--batch", 2, "--json", out, "--backend", "onnxruntime", "--warmup", 1,
                 "--min-iters", 5, "--min-seconds", 0, "--steps", 2, "--image-reps", 1)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert BENCH_KEYS <= set(result)
    assert result["runtime"] == "onnxruntime" and result["batch"] == 2 and result["sampler_steps"] == 2
    assert result["p50_ms"] > 0 and result["power"] == {"source": "not available"}


def test_sample_draws_images_in_range(bundle, tmp_path):
    out = tmp_path / "s.npy"
    proc = board(bundle, "run.py", "sample", "--n", 3, "--steps", 2, "--out", out, "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    images = np.load(out)
    assert images.shape == (3, 1, 8, 8) and np.abs(images).max() <= 1.0
    assert (tmp_path / "s.png").is_file()  # Pillow is installed here


def test_sample_and_bench_run_the_multistep_samplers_at_a_spacing(bundle, tmp_path, tiny_onnx):
    """The board draws UniPC / Karras images equal to the numpy sampler's in process (same model, same seed)."""
    out = tmp_path / "u.npy"
    proc = board(bundle, "run.py", "sample", "--n", 2, "--steps", 3, "--sampler", "unipc", "--spacing", "karras",
                 "--out", out, "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    from cunet_edge.runtimes import numpy_sampler
    from cunet_edge.runtimes.base import open_runner

    with open_runner(tiny_onnx, "onnxruntime") as r:
        want = numpy_sampler.sample(r.eps_fn(), 2, (1, 8, 8), np.load(bundle / "schedule.npy"), sampler="unipc",
                                    steps=3, spacing="karras", batch_size=16,
                                    **r.train_config().diffusion.sampler_options())
    np.testing.assert_allclose(np.load(out), want, rtol=0, atol=1e-5)
    proc = board(bundle, "run.py", "bench", "--backend", "onnxruntime", "--json", tmp_path / "b.json", "--min-iters", 2,
                 "--min-seconds", 0, "--steps", 3, "--image-reps", 1, "--sampler", "dpmpp2m", "--spacing", "trailing")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert (result["sampler"], result["sampler_steps"], result["spacing"]) == ("dpmpp2m", 3, "trailing")
    proc = board(bundle, "run.py", "sample", "--steps", 3, "--sampler", "unipc", "--eta", 0.5, "--out", out,
                 "--backend", "onnxruntime")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: the unipc sampler is deterministic (eta = 0); got eta=0.5"


def test_selfcheck_fails_when_expected_outputs_are_tampered(bundle, tmp_path):
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    data = dict(np.load(copy / "selfcheck.npz"))
    data["eps"] = data["eps"] * 1.01
    np.savez(copy / "selfcheck.npz", **data)
    proc = board(copy, "run.py", "selfcheck", "--backend", "onnxruntime")
    assert proc.returncode != 0 and "differ from manifest.json" in proc.stderr and "selfcheck.npz" in proc.stderr
    proc = board(copy, "run.py", "selfcheck", "--backend", "onnxruntime", "--no-verify")
    assert proc.returncode == 1 and "selfcheck FAILED" in proc.stdout


def test_missing_tensorrt_is_one_line(bundle):
    proc = board(bundle, "run.py", "selfcheck", "--backend", "tensorrt")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "tensorrt" in proc.stderr
    proc = board(bundle, "build_engine.py")
    assert proc.returncode == 2 and "build_engine.sh" in proc.stderr and "Traceback" not in proc.stderr


# vermin (a dev dependency) finds the minimum Python each construct needs: syntax, and standard-library modules,
# functions and arguments (str.removeprefix, functools.cache, ...), which a 3.8 parse would not catch.
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "-t=3.8-", "--violations",
          "--no-tips", "--processes=1"]


def _vermin(*paths):
    proc = subprocess.run([*VERMIN, *map(str, paths)], capture_output=True, text=True, check=False, timeout=120)
    assert "No module named vermin" not in proc.stderr, "vermin is missing: pip install -e '.[dev]'"
    return proc


def test_board_scripts_need_nothing_newer_than_python38(bundle):
    """Every Python file a bundle ships (its scripts and the modules copied from cunet_edge)."""
    shipped = sorted(bundle.glob("*.py"))
    assert {"run.py", "build_engine.py", "cudamem.py", "sampler.py", "trt_build.py", "jetson.py",
            "trt_check.py"} <= {p.name for p in shipped}
    proc = _vermin(*shipped)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_python38_check_catches_newer_constructs(tmp_path):
    """The check above cannot pass silently: vermin flags a 3.9 standard-library function and 3.10 syntax."""
    (tmp_path / "new.py").write_text("import functools\n\n\n@functools.cache\ndef f(s):\n    match s:\n"
                                     "        case _:\n            return s\n")
    proc = _vermin(tmp_path / "new.py")
    assert proc.returncode != 0 and "'functools.cache' member requires !2, 3.9" in proc.stdout, proc.stdout
    assert "pattern matching requires !2, 3.10" in proc.stdout and "Target versions not met:   3.8-" in proc.stdout


@pytest.mark.skipif(not PY38.exists(), reason="needs a Python 3.8 interpreter")
def test_board_scripts_start_on_python38(bundle, tmp_path):
    """Module-level code and argparse set-up run on a real 3.8 (numpy stubbed: that interpreter has none)."""
    (tmp_path / "numpy.py").write_text("ndarray = object\ninteger = int\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONPYCACHEPREFIX": str(tmp_path / "pyc")}
    for args in (["run.py", "--help"], ["run.py", "bench", "--help"], ["build_engine.py", "--help"],
                 ["-c", "import sampler; print(sorted(sampler.SAMPLERS))"],
                 ["-c", "import trt_build; print(trt_build.strongly_typed('8.5.2'))"],
                 ["-c", "import jetson; print(jetson.power_state())"],
                 ["-c", "import cudamem\ntry:\n    cudamem.open_cuda('ctypes', '/no.so')\n"
                        "except cudamem.Unavailable as e:\n    print(e)"]):
        proc = subprocess.run([str(PY38), *args], cwd=bundle, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (args, proc.stderr)


def test_tegrastats_lines_parse_loosely(monkeypatch):
    monkeypatch.setattr(sys, "path", sys.path[:])  # run.py puts its own folder first on sys.path
    ns = _run_py_namespace()
    jp6 = ("RAM 2185/7620MB (lfb 1x4MB) SWAP 0/3810MB CPU [1%@729,2%@729] EMC_FREQ 3%@2133 GR3D_FREQ 45%@[305] "
           "cpu@47.5C VDD_IN 4647mW/4647mW VDD_CPU_GPU_CV 483mW/483mW VDD_SOC 1449mW/1449mW")
    got = ns["parse_tegrastats"](jp6)
    assert got == {"power_mw.VDD_IN": 4647, "power_mw.VDD_CPU_GPU_CV": 483, "power_mw.VDD_SOC": 1449,
                   "GR3D_FREQ.percent": 45, "GR3D_FREQ.mhz": 305, "EMC_FREQ.percent": 3, "EMC_FREQ.mhz": 2133}
    old = "RAM 1234/3964MB SWAP 0/1982MB GR3D_FREQ 0%@76 POM_5V_IN 3125/3125 POM_5V_GPU 0/0"
    assert ns["parse_tegrastats"](old) == {"power_mw.POM_5V_IN": 3125, "power_mw.POM_5V_GPU": 0,
                                           "GR3D_FREQ.percent": 0, "GR3D_FREQ.mhz": 76}
    assert ns["parse_tegrastats"]("garbage") == {}


def test_bench_records_power_from_tegrastats_when_present(bundle, tmp_path):
    fake = tmp_path / "bin" / "tegrastats"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nwhile true; do echo 'GR3D_FREQ 50%@[600] VDD_IN 5000mW/5000mW'; sleep 0.02; done\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "r.json"
    proc = board(bundle, "run.py", "bench", "--json", out, "--backend", "onnxruntime", "--warmup", 1, "--min-iters", 3,
                 "--min-seconds", 0.3, "--steps", 2, "--image-reps", 1, "--power-interval-ms", 20, env=env)
    assert proc.returncode == 0, proc.stderr
    power = json.loads(out.read_text())["power"]
    assert power["source"] == "tegrastats" and power["mean"]["power_mw.VDD_IN"] == 5000


def test_bench_on_a_jetson_records_power_mode_and_clock_lock(bundle, tmp_path):
    """run.py bench on a board that reads as a Jetson: fake nvpmodel / jetson_clocks print the real formats."""
    from test_bench import CLOCKS_DVFS, NVPMODEL_Q

    (tmp_path / "release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, out in (("nvpmodel", NVPMODEL_Q), ("jetson_clocks", CLOCKS_DVFS)):
        (fakes / f"{name}.out").write_text(out)
        (fakes / name).write_text(f'#!/bin/sh\ncat "$(dirname "$0")/{name}.out"\n')
        (fakes / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}",
           "CUNET_EDGE_TEGRA_RELEASE": str(tmp_path / "release")}
    out = tmp_path / "r.json"
    proc = board(bundle, "run.py", "bench", "--json", out, "--backend", "onnxruntime", "--warmup", 1, "--min-iters", 3,
                 "--min-seconds", 0, "--steps", 2, "--image-reps", 1, env=env)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(out.read_text())["jetson"]
    assert state["l4t"].startswith("# R35 (release), REVISION: 4.1") and state["power_mode"] == "15W"
    assert state["power_mode_id"] == 0 and state["clocks_locked"] is False
    assert "warning: clocks are not locked (cpu0, cpu1, gpu scale with the load)" in proc.stderr


def _run_py_namespace():
    import runpy

    from cunet_edge.devices.deploy import TEMPLATE_DIR

    return runpy.run_path(str(TEMPLATE_DIR / "run.py"), run_name="run_py")


# ---------------------------------------------------------------- ssh

def test_remote_commands_are_argument_lists_with_strict_host_keys(tmp_path):
    from cunet_edge.devices.deploy import remote_commands

    cmds = remote_commands(tmp_path / "b1", "nvidia@orin.local")
    assert all(isinstance(c, list) and all(isinstance(a, str) for a in c) for c in cmds)
    assert [c[0] for c in cmds] == ["ssh", "rsync", "ssh", "ssh", "ssh", "scp"]
    for c in cmds:
        joined = " ".join(c)
        assert "StrictHostKeyChecking=yes" in joined and "accept-new" not in joined
    ssh = [c for c in cmds if c[0] == "ssh"]
    assert all(c[c.index("nvidia@orin.local") + 1:][0] in ("mkdir", "python3") for c in ssh)
    steps = [c[c.index("nvidia@orin.local") + 1:] for c in ssh]
    assert steps[1:] == [["python3", "cunet-edge-bundles/b1/build_engine.py", "--skip-without-tensorrt"],
                         ["python3", "cunet-edge-bundles/b1/run.py", "selfcheck"],
                         ["python3", "cunet-edge-bundles/b1/run.py", "bench", "--batch", "1", "--json",
                          "cunet-edge-bundles/b1/results.json"]]
    assert cmds[1][-2:] == [str((tmp_path / "b1").resolve()), "nvidia@orin.local:cunet-edge-bundles/"]
    assert cmds[-1][-2:] == ["nvidia@orin.local:cunet-edge-bundles/b1/results.json",
                             str((tmp_path / "b1.results.json").resolve())]
    scp = remote_commands(tmp_path / "b1", "me@10.0.0.7", accept_new_host_key=True, rsync=False)
    assert scp[1][0] == "scp" and "-r" in scp[1]
    assert all("StrictHostKeyChecking=accept-new" in c for c in scp)


@pytest.mark.parametrize("host", ["a; rm -rf /", "-oProxyCommand=sh@x", "user@host name", "user@", "@host",
                                  "user@host:22", "u$(id)@h", "user@-h", "user@h;ls", "user@h\nls"])
def test_bad_hosts_are_refused(host, tmp_path):
    from cunet_edge.devices.deploy import check_host, remote_commands

    with pytest.raises(ConfigError, match="is not USER@HOST"):
        check_host(host)
    with pytest.raises(ConfigError):
        remote_commands(tmp_path / "b", host)


def test_ssh_settings_go_first_on_every_command_and_unsafe_ones_are_refused(tmp_path, cli, tiny_onnx):
    from cunet_edge.devices.deploy import SshConfig, remote_commands

    key = tmp_path / "id"
    key.write_text("k")
    ssh = SshConfig(port=2222, identity=str(key), options=("UserKnownHostsFile=/tmp/kh",), remote_dir="/opt/b",
                    remote_python="/opt/venv/bin/python3")
    cmds = remote_commands(tmp_path / "b1", "me@board", rsync=False, ssh=ssh)
    head = ["-o", "UserKnownHostsFile=/tmp/kh", "-o", "Port=2222", "-o", f"IdentityFile={key.resolve()}"]
    assert all(c[1:7] == head for c in cmds)  # ssh keeps the first value of an option: the user's come first
    assert cmds[0][-3:] == ["mkdir", "-p", "/opt/b"] and cmds[1][-1] == "me@board:/opt/b/"
    assert cmds[2][-3:] == ["/opt/venv/bin/python3", "/opt/b/b1/build_engine.py", "--skip-without-tensorrt"]
    assert cmds[-1][-2] == "me@board:/opt/b/b1/results.json"
    for bad, match in [({"port": 0}, "ssh port"), ({"identity": str(tmp_path / "nope")}, "does not exist"),
                       ({"options": ("ProxyCommand=sh",)}, "runs a command"),
                       ({"options": ("LocalCommand=x",)}, "runs a command"),
                       ({"options": ("User=a b",)}, "is not Key=Value"), ({"options": ("-v",)}, "is not Key=Value"),
                       ({"remote_dir": "a;rm -rf ~"}, "plain path"), ({"remote_dir": "-oX"}, "plain path"),
                       ({"remote_dir": "x/../.."}, "plain path"), ({"remote_python": "python3 -c x"}, "plain path")]:
        with pytest.raises(ConfigError, match=match):
            SshConfig(**bad)
    res = cli("deploy", tiny_onnx, "--device", DEVICE, "--out", tmp_path / "o", "--ssh-port", "22")
    _one_line_error(res, "need --host")
    assert not (tmp_path / "o").exists()


def test_run_remote_runs_each_step_without_a_shell_and_names_a_failing_one(tmp_path):
    from cunet_edge.devices.deploy import remote_commands, run_remote

    calls = []

    def ok(cmd, check):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    run_remote(tmp_path / "b", "me@board", runner=ok, echo=lambda line: None)
    want = remote_commands(tmp_path / "b", "me@board", rsync=shutil.which("rsync") is not None)
    assert calls == want

    def fail_selfcheck(cmd, check):
        return subprocess.CompletedProcess(cmd, 1 if "selfcheck" in cmd else 0)

    with pytest.raises(CunetEdgeError, match="exit 1.*selfcheck"):
        run_remote(tmp_path / "b", "me@board", runner=fail_selfcheck, echo=lambda line: None)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """OpenSSH's sshd on 127.0.0.1 at a free port, with its own host key and one authorized user key (all in tmp).

    Yields (USER@127.0.0.1, port, user key, known_hosts file). Skips, saying why, where sshd is not installed
    (Debian: openssh-server; .ci/run installs it).
    """
    import getpass
    import socket
    import time

    daemon = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
                                           if os.access(p, os.X_OK)), None)
    if daemon is None or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        pytest.skip("OpenSSH's sshd/ssh/ssh-keygen are not installed (Debian: apt install openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    if os.geteuid() == 0:  # sshd run by root insists on its privilege-separation folder (Debian's unit makes it)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = _free_port()
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        f"PidFile {d / 'sshd.pid'}", "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
        "LogLevel ERROR"]) + "\n")
    proc = subprocess.Popen([daemon, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, f"sshd exited {proc.returncode}: {(d / 'sshd.log').read_text()}"
                assert time.monotonic() < deadline, "sshd did not listen within 10 s"
                time.sleep(0.05)
        yield f"{getpass.getuser()}@127.0.0.1", port, d / "user_key", d / "known_hosts"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_deploy_host_runs_the_bundle_over_a_real_ssh_server_and_fetches_results(cli, sshd, tiny_onnx, tmp_path,
                                                                               capfd):
    """deploy --host against a real sshd: copy, engine build (skipped here: no TensorRT), selfcheck, bench, fetch."""
    host, port, key, known = sshd
    board_dir = tmp_path / "board"
    out = tmp_path / "b"
    res = cli("deploy", tiny_onnx, "--device", DEVICE, "--out", out, "--no-tarball", "--host", host,
              "--ssh-port", port, "--identity", key, "--ssh-option", f"UserKnownHostsFile={known}",
              "--accept-new-host-key", "--remote-dir", board_dir, "--remote-python", sys.executable)
    printed = capfd.readouterr()
    assert res.exit_code == 0, res.output + printed.out + printed.err
    # The board's copy is byte-for-byte the bundle, the engine build said why it was skipped, run.py checked it.
    assert Artifact.load(board_dir / "b").manifest == Artifact.load(out).manifest
    assert "engine build skipped: the tensorrt Python module is not importable" in printed.out
    assert "selfcheck passed: onnxruntime" in printed.out
    assert not (board_dir / "b" / "model.plan").exists()
    # The results came back beside the bundle, from the board's bench.
    results = json.loads((tmp_path / "b.results.json").read_text())
    assert BENCH_KEYS <= set(results) and results["runtime"] == "onnxruntime" and results["batch"] == 1
    assert results["p50_ms"] > 0 and results["bundle_id"] == Artifact.load(out).manifest["id"]
    assert f"{tmp_path / 'b.results.json'}  bench results from {host}" in res.stdout
    # The server's host key was learnt into the given known_hosts (not ~/.ssh's).
    assert (key.parent / "host_key.pub").read_text().split()[1] in known.read_text()


# ---------------------------------------------------------------- bad input, through the CLI

def _int8_copy(tiny_onnx, tmp_path):
    """The tiny export relabelled as an INT8 artifact (only the manifest matters to the device check)."""
    copy = Path(shutil.copytree(tiny_onnx, tmp_path / "int8"))
    m = json.loads((copy / "manifest.json").read_text())
    m.update(kind="onnx-int8", precision="int8")
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


def _one_line_error(result, match):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], result.stderr


@pytest.mark.parametrize("case, match", [
    ("unknown-device", "unknown device 'jetson-nope'"),
    ("int8-nano", "INT8 is not supported"),
    ("fp32-nano", "ships Python 3.6"),
    ("not-onnx", "of kind 'unrolled'"),
    ("bad-host", "is not USER@HOST"),
    ("existing-out", "already exists"),
])
def test_bad_input_is_one_line_error(cli, case, match, tiny_onnx, tiny_unrolled, tmp_path):
    art, device, extra = tiny_onnx, DEVICE, []
    out = tmp_path / "bundle"
    if case == "unknown-device":
        device = "jetson-nope"
    elif case == "int8-nano":
        art, device = _int8_copy(tiny_onnx, tmp_path), "jetson-nano"
    elif case == "fp32-nano":
        device = "jetson-nano"
    elif case == "not-onnx":
        art = tiny_unrolled
    elif case == "bad-host":
        extra = ["--host", "a; rm -rf /"]
    else:
        out.mkdir()
    _one_line_error(cli("deploy", art, "--device", device, "--out", out, *extra), match)
    if case != "existing-out":
        assert not out.exists() and not (tmp_path / "bundle.tar.gz").exists()


def test_cli_no_tarball_and_summary(cli, tiny_onnx, tmp_path):
    result = cli("deploy", tiny_onnx, "--device", "jetson-agx-orin-64gb", "--out", tmp_path / "b", "--no-tarball")
    assert result.exit_code == 0, result.output
    assert "fp32 bundle for jetson-agx-orin-64gb" in result.stdout
    assert (tmp_path / "b" / "run.py").is_file() and not (tmp_path / "b.tar.gz").exists()
    script = (tmp_path / "b" / "build_engine.sh").read_text()
    assert "# trtexec" in script and "--useDLACore=0" in script  # AGX Orin has DLAs: the DLA build is offered


def test_library_errors_before_any_work(tiny_onnx, tiny_unrolled, tmp_path):
    from cunet_edge.devices.deploy import DeployConfig, deploy

    with pytest.raises(ArtifactError):
        deploy(tiny_unrolled, DeployConfig(device=DEVICE), tmp_path / "x")
    (tmp_path / "y.tar.gz").write_text("")
    with pytest.raises(OutputPathError, match="y.tar.gz"):
        deploy(tiny_onnx, DeployConfig(device=DEVICE), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(ConfigError):
        DeployConfig(device=DEVICE, selfcheck_n=0)


def test_importing_deploy_stays_light():
    code = ("import sys, cunet_edge.devices.deploy, cunet_edge.cli.deploy; "
            "print(sorted(m for m in ('onnxruntime', 'tensorrt', 'onnx') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "[]", proc.stderr


# ---------------------------------------------------------------- build_engine.py against the real API, faked

# A tensorrt module for the board subprocess: the fake derived from the real surface of FAKE_TRT_VERSION
# (tests/trt_surface.py), so a name that version lacks fails as on the board. Its call log is written at exit.
FAKE_TRT = """
import atexit, json, os, sys
sys.path.insert(0, os.environ["FAKE_TRT_TESTS"])
import trt_surface
fake = trt_surface.FakeTensorRT(os.environ["FAKE_TRT_VERSION"], {
    "Builder.num_DLA_cores": 2, "Builder.build_serialized_network": lambda st, net, cfg: b"PLAN",
    "OnnxParser.num_errors": 0, "INetworkDefinition.num_inputs": 2, "INetworkDefinition.num_layers": 2,
    "IBuilderConfig.add_optimization_profile": lambda st, p: 0,
    "IBuilderConfig.can_run_on_DLA": lambda st, layer: layer.name != "odd_op"})

def get_layer(st, i):
    layer = fake.new("ILayer")
    layer.name = ["conv", "odd_op"][i]
    return layer

def get_input(st, i):
    tensor = fake.new("ITensor")
    tensor.name, tensor.shape = [("x", (-1, 1, 8, 8)), ("t", (-1,))][i]
    return tensor

fake._behaviours.update({"INetworkDefinition.get_input": get_input, "INetworkDefinition.get_layer": get_layer})
trt_surface.inspector_behaviours(fake, [("conv", "CaskConvolution", "FP32", "sm87_xmma_fprop_f32"),
                                        ("odd_op", "PointWise", "FP32", None)])
sys.modules["tensorrt"] = fake

def plain(a):
    if isinstance(a, (tuple, list)):
        return [plain(x) for x in a]
    if type(a).__name__ == "EnumValue":  # before int: enum values are ints
        return str(a)
    return a if a is None or isinstance(a, (str, int, float)) else type(a).__name__

atexit.register(lambda: open(os.environ["FAKE_TRT_LOG"], "w").write(
    json.dumps([[k, plain(a)] for k, a, _ in fake.LOG])))
"""


def _fake_build(bundle, tmp_path, version, *args):
    work = Path(shutil.copytree(bundle, tmp_path / "b"))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "tensorrt.py").write_text(FAKE_TRT)
    log = tmp_path / "log.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "FAKE_TRT_VERSION": version, "FAKE_TRT_LOG": str(log),
           "FAKE_TRT_TESTS": str(Path(__file__).parent)}
    proc = board(work, "build_engine.py", *args, env=env)
    calls = {}
    for key, call_args in json.loads(log.read_text()) if log.exists() else []:
        calls.setdefault(key, []).append(call_args)
    return work, proc, calls


@pytest.mark.parametrize("version, extra, strong, flags", [
    ("8.6.1", [], False, []),
    ("10.3.0", [], True, []),
    ("10.3.0", ["--dla-core", "1", "--min-batch", "1", "--max-batch", "1"], False,
     ["BuilderFlag.FP16", "BuilderFlag.GPU_FALLBACK"]),
    ("10.16.1.11", [], True, []),
    ("11.4.0.106", [], True, []),
])
def test_build_engine_picks_typing_and_flags_by_tensorrt_version(bundle, tmp_path, version, extra, strong, flags):
    work, proc, got = _fake_build(bundle, tmp_path, version, *extra)
    assert proc.returncode == 0, proc.stderr
    explicit_batch = 1 if version.startswith("8.") else 0
    assert got["Builder.create_network"] == [[explicit_batch | ((1 << 1) if strong and version < "11" else 0)]]
    assert [f for (f,) in got.get("IBuilderConfig.set_flag", [])] == flags
    assert got["IBuilderConfig.clear_flag"] == [["BuilderFlag.TF32"]]  # fp32 bundle: TF32 off
    profile = {name: shapes for name, *shapes in got["IOptimizationProfile.set_shape"]}
    assert profile["x"] == [[1, 1, 8, 8], [1, 1, 8, 8], [1 if extra else 16, 1, 8, 8]]  # DLA: static shapes
    assert got["IBuilderConfig.set_memory_pool_limit"] == [["MemoryPoolType.WORKSPACE", 1024 << 20]]
    engine = json.loads((work / "engine.json").read_text())
    if extra:
        assert got["IBuilderConfig.default_device_type="] == [["DeviceType.DLA"]]
        assert got["IBuilderConfig.DLA_core="] == [[1]]
        assert engine["dla_gpu_fallback_layers"] == ["odd_op"] and "run on the GPU, not the DLA: odd_op" in proc.stdout
    assert (work / "model.plan").read_bytes() == b"PLAN"
    assert engine["strongly_typed"] is strong and engine["tensorrt"] == version


@pytest.mark.parametrize("version, args, match", [
    ("10.3.0", ["--dla-core", "0"], "DLA builds take static shapes only, and the batch profile is 1..16"),
    ("11.4.0.106", ["--dla-core", "0", "--max-batch", "1"],
     "DLA runs FP16 and INT8 layers only, and this ONNX is fp32"),
    ("10.3.0", ["--dla-core", "2", "--max-batch", "1"], "DLA core 2 requested; this GPU has 2"),
    ("10.3.0", ["--dla-core", "0", "--max-batch", "1", "--no-gpu-fallback"],
     "1 layer(s) cannot run on the DLA and GPU fallback is off: odd_op"),
])
def test_build_engine_refusals_are_one_line(bundle, tmp_path, version, args, match):
    work, proc, _ = _fake_build(bundle, tmp_path, version, *args)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert match in proc.stderr and not (work / "model.plan").exists()


# ---------------------------------------------------------------- run.py's TensorRT path against fakes (no GPU here)

def _fake_runtime(version):
    """The surface-derived tensorrt of `version`, behaving as an engine eps = 0.5 x + 1e-3 t over host memory."""
    import trt_surface

    return trt_surface.engine_runtime(version)


# cuda-python's runtime module as its calls return: (cudaError_t, values...), over host memory.
FAKE_CUDART = """
import ctypes
_live = {}
class cudaMemcpyKind:
    cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2
def cudaMalloc(n):
    buf = ctypes.create_string_buffer(n)
    _live[ctypes.addressof(buf)] = buf
    return (0, ctypes.addressof(buf))
def cudaFree(ptr): return (0,) if _live.pop(ptr, None) is not None else (17,)
def cudaMemcpyAsync(dst, src, n, kind, stream): ctypes.memmove(dst, src, n); return (0,)
def cudaStreamCreate(): return (0, 7)
def cudaStreamSynchronize(stream): return (0,)
def cudaStreamDestroy(stream): return (0,)
def cudaGetErrorString(err): return (0, b"invalid device pointer")
"""


def _module(name, source, folder):
    """A fake module loaded from a file; the test puts it in sys.modules (monkeypatch restores them)."""
    import importlib.util

    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.4.0.106"])
def test_tensorrt_backend_stages_buffers_and_casts_inputs(bundle, tmp_path, monkeypatch, version):
    import runpy

    monkeypatch.setattr(sys, "path", sys.path[:])  # run.py puts its own folder first on sys.path
    work = Path(shutil.copytree(bundle, tmp_path / "b"))
    (work / "model.plan").write_bytes(b"PLAN")
    cuda = _module("cuda", "", tmp_path)
    cuda.cudart = _module("cudart", FAKE_CUDART, tmp_path)
    trt = _fake_runtime(version)
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.cudart", cuda.cudart)):
        monkeypatch.setitem(sys.modules, name, mod)
    ns = runpy.run_path(str(work / "run.py"), run_name="run_py")
    info = json.loads((work / "bundle.json").read_text())
    backend = ns["open_backend"]("auto", info)
    assert backend.name == "tensorrt"
    rng = np.random.default_rng(0)
    for b in (2, 5, 1):  # growing and shrinking batches reuse or regrow the device buffers
        x = rng.standard_normal((b, 1, 8, 8)).astype(np.float32)
        t = np.arange(b, dtype=np.int64) * 100
        np.testing.assert_allclose(backend(x, t), x * 0.5 + t[:, None, None, None] * 1e-3, rtol=1e-6)
    assert backend.batch_range == (1, 8)
    x, t = rng.standard_normal((19, 1, 8, 8)).astype(np.float32), np.arange(19)
    np.testing.assert_allclose(ns["batched"](backend, None)(x, t), x * 0.5 + t[:, None, None, None] * 1e-3, rtol=1e-6)
    assert max(shape[0] for _, shape in trt.calls("IExecutionContext.set_input_shape")) == 8  # 19 = 8 + 8 + 3
    with pytest.raises(ns["BundleError"], match=r"refused input x of shape \(9, 1, 8, 8\).*--max-batch"):
        backend(x[:9], t[:9])
    backend.close()
    (work / "engine.json").write_text(json.dumps({"tensorrt": "9.9.9"}))
    with pytest.raises(ns["BundleError"], match=f"built with TensorRT 9.9.9, this is {version}"):
        ns["TensorRTBackend"](info)


# ---------------------------------------------------------------- build_engine.py's layers and its engine check

def test_build_engine_saves_layers_and_skips_the_check_without_a_cuda_binding(bundle, tmp_path):
    work, proc, got = _fake_build(bundle, tmp_path, "10.3.0")
    assert proc.returncode == 0, proc.stderr
    assert got["IBuilderConfig.profiling_verbosity="] == [["ProfilingVerbosity.DETAILED"]]
    layers = json.loads((work / "layers.json").read_text())["layers"]
    assert [(r["name"], r["precision"], r["tactic"]) for r in layers] == [
        ("conv", "FP32", "sm87_xmma_fprop_f32"), ("odd_op", "FP32", "0x0000000000001eef")]
    engine = json.loads((work / "engine.json").read_text())
    assert engine["engine_layers"]["by_precision"] == {"FP32": 2} and engine["engine_check"] is None
    assert "2 layers (FP32 2); 1 convolution/matmul" in proc.stdout
    assert "engine check skipped: no CUDA binding for the TensorRT backend works here" in proc.stdout


def _bundle_module(work, monkeypatch, version):
    """The bundle's build_engine.py imported as the board would run it, with the surface-derived tensorrt."""
    import runpy

    import trt_surface

    monkeypatch.setattr(sys, "path", sys.path[:])
    fake = trt_surface.FakeTensorRT(version, {"Builder.build_serialized_network": lambda st, net, cfg: b"DEBUG",
                                              "OnnxParser.num_errors": 0,
                                              "IBuilderConfig.add_optimization_profile": lambda st, p: 0})
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    for name in ("trt_build", "trt_check", "run"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return runpy.run_path(str(work / "build_engine.py"), run_name="build_engine_py"), fake


@pytest.mark.parametrize("version", ["8.6.1", "11.4.0.106"])
def test_bundle_engine_check_passes_and_traces_a_diverging_engine(bundle, tmp_path, monkeypatch, version):
    """The bundle's check against ONNX Runtime, as on the board; the engine's outputs come from ONNX Runtime (no GPU
    here): model.onnx as is (passes), then with one convolution's weights shifted (fails at that convolution)."""
    import onnx
    import trt_surface
    from onnx import numpy_helper

    from cunet_edge.export import trt_check

    work = Path(shutil.copytree(bundle, tmp_path / "b"))
    ns, fake = _bundle_module(work, monkeypatch, version)
    info = json.loads((work / "bundle.json").read_text())
    settings = {"precision": "fp32", "workspace_mb": 64, "min_batch": 1, "opt_batch": 2, "max_batch": 4,
                "dla_core": None, "gpu_fallback": True, "tf32": False, "builder_precision": "auto",
                "timing_cache": None}
    record = {"profile": {"min": 1, "opt": 2, "max": 4}}
    model = onnx.load(str(work / "model.onnx"))
    trt_surface.onnx_network_behaviours(fake, model)
    seen = []

    def stand_in(engine_model):
        def open_engine(path):
            seen.append(os.path.basename(path))
            return trt_check.ort_outputs(trt_check.mark_all_outputs(engine_model))
        return open_engine

    ok = ns["engine_check"](fake, info, str(work / "model.plan"), settings, record, open_engine=stand_in(model))
    assert ok["ok"] and [r["t"] for r in ok["per_timestep"]] == trt_check.schedule_timesteps(info["timesteps"])
    assert seen == ["model.plan"] and not fake.calls("Builder")
    inits = {t.name: t for t in model.graph.initializer}
    node = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits][2]
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    (w,) = [t for t in bad.graph.initializer if t.name == node.input[1]]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(-1.0), w.name))
    failed = ns["engine_check"](fake, info, str(work / "model.plan"), settings, record, open_engine=stand_in(bad))
    assert not failed["ok"] and seen[1:] == ["model.plan", "debug.plan"] and not (work / "debug.plan").exists()
    div = failed["first_divergence"]
    assert (div["node"], div["op_type"], div["tensor"]) == (node.name, "Conv", node.output[0])
    assert len(fake.calls("Builder.build_serialized_network")) == 1  # the debug build
    assert fake.calls("IBuilderConfig.profiling_verbosity=") == [(fake.ProfilingVerbosity.DETAILED,)]


def test_bundle_check_opens_engines_through_run_pys_backend(bundle, tmp_path, monkeypatch):
    """build_engine.py's default engine side is run.py's TensorRT backend on the plan it names, every output."""
    work = Path(shutil.copytree(bundle, tmp_path / "b"))
    (work / "other.plan").write_bytes(b"PLAN")
    ns, _ = _bundle_module(work, monkeypatch, "10.3.0")
    cuda = _module("cuda", "", tmp_path)
    cuda.cudart = _module("cudart", FAKE_CUDART, tmp_path)
    for name, mod in (("tensorrt", _fake_runtime("10.3.0")), ("cuda", cuda), ("cuda.cudart", cuda.cudart)):
        monkeypatch.setitem(sys.modules, name, mod)
    run_engine = ns["_open_engine"](json.loads((work / "bundle.json").read_text()))(str(work / "other.plan"))
    x, t = np.ones((2, 1, 8, 8), np.float32), np.array([10, 20])
    out = run_engine({"x": x, "t": t})
    assert set(out) == {"eps"} and np.allclose(out["eps"], x * 0.5 + t[:, None, None, None] * 1e-3)
