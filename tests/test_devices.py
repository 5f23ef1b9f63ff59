"""Device profiles: every TOML parses strictly, every figure is cited, the checks refuse what a board cannot run."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib

import pytest
from click.testing import CliRunner

from cunet_edge.cli.devices import devices
from cunet_edge.devices.profiles import (
    PROFILE_DIR,
    RUNTIME_OVERHEAD_BYTES,
    TENSORRT_FEATURES,
    DeviceProfile,
    check_request,
    list_profiles,
    load_profile,
    load_profile_file,
)
from cunet_edge.errors import ConfigError

README = PROFILE_DIR.parent / "README.md"
NAMES = list_profiles()
# Fields that describe the profile itself rather than state a sourced fact.
UNCITED = {"name", "display_name", "kind", "notes"}

EXPECTED = {
    "jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano-4gb",
    "jetson-orin-nano-8gb", "jetson-orin-nx-8gb", "jetson-orin-nx-16gb", "jetson-agx-orin-32gb",
    "jetson-agx-orin-64gb", "jetson-agx-thor", "rtx-3060", "rtx-3090", "rtx-4090", "a100-80gb-sxm", "l4", "h100-sxm",
}


def test_the_requested_targets_are_all_there():
    assert set(NAMES) == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_parses(name):
    p = load_profile(name)
    assert isinstance(p, DeviceProfile) and p.name == name
    assert p.memory_gb > 0 and p.sm >= (5, 3)
    if p.kind == "jetson":
        assert p.jetpack and p.l4t and p.python
    else:
        assert p.jetpack is None and p.tensorrt is None and not p.power_modes_w
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.memory_gb = 1


def _citations() -> dict[str, set[str]]:
    """README source rows: device -> the field names its rows cite (a row must hold a URL)."""
    cited: dict[str, set[str]] = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in EXPECTED:
            assert "http" in cells[2] or "[" in cells[2], line
            cited.setdefault(cells[0], set()).update(re.findall(r"[a-z][a-z0-9_]+", cells[1]))
    return cited


@pytest.mark.parametrize("name", NAMES)
def test_every_field_present_has_a_citation(name):
    present = set(tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())) - UNCITED
    missing = present - _citations().get(name, set())
    assert not missing, f"{name}: no source row in devices/README.md for {sorted(missing)}"


def test_shared_source_letters_are_defined():
    text = README.read_text()
    for ref in set(re.findall(r"\[([A-Z0-9]+)\]", text)):
        assert f"**[{ref}]**" in text, ref


def _write(tmp_path, name, body):
    path = tmp_path / f"{name}.toml"
    path.write_text(body)
    return path


BASE = 'name = "x"\ndisplay_name = "X"\nkind = "desktop"\ngpu_arch = "Ampere"\ncompute_capability = "8.6"\n' \
       'memory_gb = 12\nprecisions = ["fp32", "fp16"]\n'


def test_strict_parsing_names_file_and_key(tmp_path):
    assert load_profile_file(_write(tmp_path, "x", BASE)).memory_gb == 12.0
    with pytest.raises(ConfigError, match=r"x\.toml: unknown key 'memroy_gb'"):
        load_profile_file(_write(tmp_path, "x", BASE + "memroy_gb = 3\n"))
    with pytest.raises(ConfigError, match=r"x\.toml: key 'memory_bandwidth_gbs' must be a positive number"):
        load_profile_file(_write(tmp_path, "x", BASE + 'memory_bandwidth_gbs = "fast"\n'))
    with pytest.raises(ConfigError, match=r"x\.toml: missing key 'precisions'"):
        load_profile_file(_write(tmp_path, "x", BASE.replace('precisions = ["fp32", "fp16"]\n', "")))
    with pytest.raises(ConfigError, match=r"y\.toml: name 'x' must equal"):
        load_profile_file(_write(tmp_path, "y", BASE))
    with pytest.raises(ConfigError, match="kind 'laptop'"):
        load_profile_file(_write(tmp_path, "x", BASE.replace('"desktop"', '"laptop"')))
    with pytest.raises(ConfigError, match="fp64"):
        load_profile_file(_write(tmp_path, "x", BASE.replace('"fp16"]', '"fp64"]')))


def test_unknown_device_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown device 'jetson-nanoo'; valid devices: a100-80gb-sxm, "):
        load_profile("jetson-nanoo")


def test_int8_on_jetson_nano_and_tx2_is_refused():
    for name in ("jetson-nano", "jetson-tx2"):
        with pytest.raises(ConfigError, match=rf"\({name}\): INT8 is not supported") as info:
            check_request(load_profile(name), precision="int8")
        assert "\n" not in str(info.value)
    check_request(load_profile("jetson-nano"), precision="fp16")
    check_request(load_profile("jetson-xavier-nx"), precision="int8")


def test_dla_only_where_there_is_one():
    with pytest.raises(ConfigError, match=r"Jetson Orin Nano \(8 GB\) \(jetson-orin-nano-8gb\): it has no DLA"):
        check_request(load_profile("jetson-orin-nano-8gb"), dla=True)
    check_request(load_profile("jetson-agx-orin-64gb"), dla=True, precision="int8")
    with pytest.raises(ConfigError, match="DLA runs only fp16 or int8"):
        check_request(load_profile("jetson-agx-orin-64gb"), dla=True, precision="fp32")
    with pytest.raises(ConfigError, match="no DLA"):
        check_request(load_profile("jetson-agx-thor"), dla=True)


def test_a_model_too_big_for_memory_is_refused():
    orin_nano = load_profile("jetson-orin-nano-8gb")
    check_request(orin_nano, model_bytes=200_000_000)
    with pytest.raises(ConfigError, match=r"jetson-orin-nano-8gb\): model needs 7\.50 GB \+ 1 GiB runtime overhead"):
        check_request(orin_nano, model_bytes=7_500_000_000)
    # The overhead alone decides at the edge.
    with pytest.raises(ConfigError, match="more than the 4 GB"):
        check_request(load_profile("jetson-nano"), model_bytes=int(4e9) - RUNTIME_OVERHEAD_BYTES + 1)


def test_tensorrt_features_follow_shipped_version_and_compute_capability():
    shipped = r"strongly_typed needs TensorRT >= 10\.0, JetPack 5\.1\.1 ships TensorRT 8\.5\.2"
    with pytest.raises(ConfigError, match=shipped):
        check_request(load_profile("jetson-agx-xavier"), tensorrt_features=["strongly_typed"])
    check_request(load_profile("jetson-agx-orin-64gb"), tensorrt_features=["strongly_typed", "explicit_quantization"])
    with pytest.raises(ConfigError, match=r"fp8 needs compute capability >= 8\.9, this GPU is sm 8\.7"):
        check_request(load_profile("jetson-orin-nx-16gb"), tensorrt_features=["fp8"])
    check_request(load_profile("rtx-4090"), tensorrt_features=["fp8"], precision="fp8")  # TensorRT user-installed
    with pytest.raises(ConfigError, match="unknown TensorRT feature 'fp2'; valid: explicit_quantization"):
        check_request(load_profile("h100-sxm"), tensorrt_features=["fp2"])
    assert set(TENSORRT_FEATURES) >= {"strongly_typed", "fp8"}


def test_several_reasons_stay_on_one_line():
    with pytest.raises(ConfigError) as info:
        check_request(load_profile("jetson-nano"), precision="int8", dla=True, model_bytes=10**10,
                      tensorrt_features=["strongly_typed"])
    msg = str(info.value)
    assert "\n" not in msg and msg.count(";") >= 3 and msg.startswith("Jetson Nano (4 GB) (jetson-nano): ")


def test_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown precision 'int4'; valid: fp32, tf32, fp16"):
        check_request(load_profile("l4"), precision="int4")


def test_cli_list_and_show(tmp_path):
    runner = CliRunner()
    res = runner.invoke(devices, ["list"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split()[:3] == ["name", "gpu", "sm"]
    assert all(name in res.output for name in NAMES)
    assert re.search(r"jetson-orin-nx-16gb\s+Ampere\s+8\.7\s+16 GB\s+-\s+50 \(GPU\+DLA\)\s+2\s+10\.3", res.output)
    res = runner.invoke(devices, ["show", "jetson-agx-orin-64gb"])
    assert res.exit_code == 0, res.output
    assert re.search(r"dla_count\s+2", res.output) and re.search(r"tensorrt\s+10\.3", res.output)
    res = runner.invoke(devices, ["show", "l4", "--json", "-"])
    assert json.loads(res.output)["compute_capability"] == "8.9"
    res = runner.invoke(devices, ["show", "rtx-3090", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "d.json").read_text())["memory_bandwidth_gbs"] == 936


def test_cli_unknown_name_is_a_one_line_error(monkeypatch):
    res = CliRunner().invoke(devices, ["show", "jetson-nanoo"])
    assert isinstance(res.exception, ConfigError) and "valid devices: " in str(res.exception)
    # Through the top-level group (as registered in cunet_edge.cli), it is one line on stderr.
    from cunet_edge import cli

    monkeypatch.setitem(cli.COMMANDS, "devices", "cunet_edge.cli.devices:devices")
    monkeypatch.setitem(cli._SUMMARIES, "devices", "Device profiles.")
    res = CliRunner().invoke(cli.main, ["devices", "show", "jetson-nanoo"])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown device 'jetson-nanoo'; valid devices: ")
