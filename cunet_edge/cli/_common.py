"""Helpers shared by the CLI commands: options from config dataclass fields, JSON output, output-path checks."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..artifact import write_json_atomic
from ..diffusion import SPACINGS, sample_ddim
from ..errors import OutputPathError

__all__ = ["write_json", "check_file_output", "JSON_OPTION", "default_of", "config_option", "sampler_options"]

JSON_OPTION = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the machine-readable result to PATH ('-' for standard output).",
)


def check_file_output(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """Fail before any work if `path` cannot be written (or has the wrong suffix)."""
    path = Path(path)
    if suffix and path.suffix.lower() != suffix:
        raise OutputPathError(f"output {path} must end in {suffix}")
    parent = path.absolute().parent
    if path.is_dir():
        raise OutputPathError(f"output {path} is a directory")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}: {parent} is not a writable directory")
    return path


def write_json(path: str | None, data: Any) -> None:
    """Write `data` as JSON to path ('-' = stdout), atomically; do nothing if path is None."""
    if path is None:
        return
    if path == "-":
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    write_json_atomic(check_file_output(path), data)


def default_of(owner, name: str) -> Any:
    """The default of field `name` of config dataclass `owner` (a factory is called; "a.b" is field b of a's
    default), or of parameter `name` of function `owner`: where every CLI default comes from."""
    first, _, rest = name.partition(".")
    if dataclasses.is_dataclass(owner):
        field = {f.name: f for f in dataclasses.fields(owner)}[first]
        factory = field.default_factory
        value = field.default if factory is dataclasses.MISSING else factory()
    else:
        value = inspect.signature(owner).parameters[first].default
    if value is dataclasses.MISSING or value is inspect.Parameter.empty:
        raise TypeError(f"{getattr(owner, '__name__', owner)}.{first} has no default")
    for attr in rest.split(".") if rest else ():
        value = getattr(value, attr)
    return value


def config_option(owner, *decls: str, field: str | None = None, unset: bool = False, **attrs):
    """click.option for field `field` (default: the option's name) of config dataclass `owner` (or parameter of
    function `owner`), whose default is the field's, shown in --help.

    With `unset`, or with `owner` a {label: dataclass} of configs the option feeds, the option is None when not
    given and the library applies the dataclass default (over a config file, or per config); --help still
    shows it ("X for label, Y for label" where they differ).
    """
    owners = owner if isinstance(owner, dict) else {"": owner}
    field = field or decls[0].split("/")[0].lstrip("-").replace("-", "_")
    defaults = {label: default_of(cls, field) for label, cls in owners.items()}
    if len(owners) == 1 and not unset:
        return click.option(*decls, default=defaults[""], show_default=True, **attrs)
    shown = {label: _shown(decls[0], value) for label, value in defaults.items()}
    if len(set(shown.values())) == 1:
        text = shown.popitem()[1]
    else:
        text = ", ".join(f"{s} for {label}" for label, s in shown.items())
    value = next(iter(defaults.values()))
    if "type" not in attrs and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        attrs["type"] = type(value)  # what click infers from a default
    attrs["help"] = f"{attrs.get('help', '')}  [default: {text}]"
    return click.option(*decls, default=None, **attrs)


def _shown(decl: str, value: Any) -> str:
    """A default as click's show_default writes it (a --on/--off flag by the name of the chosen side)."""
    if isinstance(value, bool) and "/" in decl:
        on, off = decl.split("/")
        return (on if value else off).lstrip("-")
    return str(value)


def sampler_options(config):
    """The options that choose how images are drawn (shared by sample and evaluate), defaults from `config`."""

    def wrap(fn):
        for opt in reversed([
            click.argument("artifact", type=click.Path()),
            config_option(config, "--n", help="Number of images."),
            config_option(config, "--sampler", help="ddim, ddpm, dpmpp2m (DPM-Solver++ 2M) or unipc (UniPC bh2)."),
            config_option(config, "--steps", help="Sampler steps (<= T)."),
            config_option(config, "--spacing", type=click.Choice(SPACINGS),
                          help="Timestep spacing (docs/samplers.md): diffusers' linspace, trailing, or Karras sigmas."),
            click.option("--eta", type=float,
                         help=f"DDIM eta (default {default_of(sample_ddim, 'eta'):g}: deterministic)."),
            config_option(config, "--seed", help="Seed of the initial noise."),
            click.option("--solver", help="Run the ODE blocks with this torchdiffeq method (unrolled: must match)."),
            click.option("--solver-steps", type=int, help="Solver steps per block (unrolled: must match)."),
        ]):
            fn = opt(fn)
        return fn

    return wrap
