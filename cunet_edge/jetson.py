"""Is this a Jetson, and how is it clocked: what `bench` records beside its timings on a board.

A Jetson is recognized by `/etc/nv_tegra_release` (L4T's release file; `scripts/setup.sh` reads the same
file). Timings on a Jetson depend on its power mode (`nvpmodel -q`) and on whether `jetson_clocks` has locked
the CPU and GPU clocks at their maximum (`jetson_clocks --show`): without it, DVFS scales them with the load.
The output of both tools is parsed by hand (no library reads it, and jetson-stats needs its own daemon);
the formats are those of JetPack 4 to 6, e.g.

    $ nvpmodel -q                  $ jetson_clocks --show
    NV Power Mode: MAXN            SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
    0                              cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=...
                                   GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
                                   EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=0

Clocks count as locked when every online CPU and the GPU run at MinFreq = MaxFreq = CurrentFreq (what
`jetson_clocks` sets; jetson-stats decides the same way). Stdlib only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["TEGRA_RELEASE_ENV", "parse_jetson_clocks", "parse_nvpmodel", "power_state", "tegra_release"]

TEGRA_RELEASE_ENV = "CUNET_EDGE_TEGRA_RELEASE"  # another path for /etc/nv_tegra_release (tests, containers)
TEGRA_RELEASE = "/etc/nv_tegra_release"
_FREQS = re.compile(r"MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")
_CPU = re.compile(r"^cpu(\d+):\s*(?:Online=(\d)\s+)?")


def tegra_release() -> str | None:
    """The first line of L4T's release file (e.g. `# R36 (release), REVISION: 4.0, ...`), or None: not a Jetson."""
    path = Path(os.environ.get(TEGRA_RELEASE_ENV) or TEGRA_RELEASE)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return lines[0].strip() if lines else ""


def parse_nvpmodel(text: str) -> tuple[str | None, int | None]:
    """(mode name, mode id) from `nvpmodel -q`: `NV Power Mode: NAME` then the id on a line of its own."""
    name = mode_id = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("NV Power Mode:"):
            name = line.split(":", 1)[1].strip() or None
        elif name is not None and mode_id is None and line.isdigit():
            mode_id = int(line)
    return name, mode_id


def parse_jetson_clocks(text: str) -> dict:
    """From `jetson_clocks --show`: the online CPUs' and the GPU's (min, max, current) and whether they are locked."""
    cpus, gpu = {}, None
    for line in text.splitlines():
        line = line.strip()
        freqs = _FREQS.search(line)
        cpu = _CPU.match(line)
        if cpu and freqs and cpu.group(2) != "0":  # an offline core does not run the benchmark
            cpus[int(cpu.group(1))] = tuple(map(int, freqs.groups()))
        elif line.startswith("GPU ") and freqs:
            gpu = tuple(map(int, freqs.groups()))
    clocks = list(cpus.values()) + ([gpu] if gpu else [])
    locked = bool(cpus) and gpu is not None and all(lo == hi == cur for lo, hi, cur in clocks)
    unlocked = [f"cpu{i}" for i, (lo, hi, cur) in cpus.items() if not lo == hi == cur]
    if gpu and not gpu[0] == gpu[1] == gpu[2]:
        unlocked.append("gpu")
    return {"locked": locked, "unlocked": unlocked, "online_cpus": len(cpus),
            "gpu_hz": {"min": gpu[0], "max": gpu[1], "current": gpu[2]} if gpu else None}


def _query(cmd: list[str]) -> tuple[str | None, str | None]:
    """(stdout, None) or (None, why not)."""
    exe = shutil.which(cmd[0]) or next((p for p in (f"/usr/sbin/{cmd[0]}", f"/usr/bin/{cmd[0]}")
                                        if os.access(p, os.X_OK)), None)
    if exe is None:
        return None, f"{cmd[0]} is not installed"
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{' '.join(cmd)} failed: {e}"
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"{' '.join(cmd)} exited {proc.returncode}: {err} (it may need sudo)"
    return proc.stdout, None


def power_state() -> dict | None:
    """None off a Jetson; on one, the L4T release, power mode, whether clocks are locked, and warnings.

    `clocks_locked` is None when `jetson_clocks --show` could not be read (it needs root on most releases).
    """
    release = tegra_release()
    if release is None:
        return None
    state = {"l4t": release, "power_mode": None, "power_mode_id": None, "clocks_locked": None, "warnings": []}
    out, why = _query(["nvpmodel", "-q"])
    if out is not None:
        state["power_mode"], state["power_mode_id"] = parse_nvpmodel(out)
        why = None if state["power_mode"] else "nvpmodel -q printed no 'NV Power Mode:' line"
    if why:
        state["warnings"].append(f"power mode unknown: {why}")
    out, why = _query(["jetson_clocks", "--show"])
    if out is not None:
        clocks = parse_jetson_clocks(out)
        if clocks["online_cpus"] or clocks["gpu_hz"]:
            state["clocks_locked"], state["clocks"] = clocks["locked"], clocks
        else:
            why = "jetson_clocks --show listed no CPU or GPU clocks"
    if why:
        state["warnings"].append(f"clock state unknown: {why}")
    elif not state["clocks_locked"]:
        state["warnings"].append("clocks are not locked (" + ", ".join(state["clocks"]["unlocked"]) + " scale "
                                 "with the load): run `sudo jetson_clocks` before timing, or the figures vary")
    return state
