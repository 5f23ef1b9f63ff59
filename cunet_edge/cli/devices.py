"""`cunet-edge devices`: the packaged device profiles (Jetson boards, desktop and datacenter GPUs)."""

import click

from ..devices.profiles import list_profiles, load_profile, profile_table
from ._common import JSON_OPTION, write_json


@click.group()
def devices():
    """Target device profiles: peak figures, DLA, JetPack/TensorRT versions, with sources in devices/README.md."""

@devices.command("list")
@JSON_OPTION
def list_(json_path):
    """A table of every profile (throughput is peak and dense; '-' = no cited source)."""
    profiles = [load_profile(name) for name in list_profiles()]
    if json_path != "-":
        click.echo(profile_table(profiles))
    write_json(json_path, [p.to_dict() for p in profiles])


@devices.command()
@click.argument("name")
@JSON_OPTION
def show(name, json_path):
    """Every field of profile NAME (unknown values are shown as '-')."""
    data = load_profile(name).to_dict()
    if json_path != "-":
        width = max(map(len, data))
        for key, value in data.items():
            click.echo(f"{key.ljust(width)}  {_shown(value)}")
    write_json(json_path, data)


def _shown(value):
    if isinstance(value, list):
        return ", ".join(map(_shown, value)) or "-"
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
