"""Helpers shared by the CLI commands: JSON output and output-path checks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..artifact import write_json_atomic
from ..errors import OutputPathError

__all__ = ["write_json", "check_file_output", "JSON_OPTION", "sampler_options"]

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


def sampler_options(n_default: int):
    """The options that choose how images are drawn (shared by sample and evaluate)."""

    def wrap(fn):
        for opt in reversed([
            click.argument("artifact", type=click.Path()),
            click.option("--n", default=n_default, show_default=True, help="Number of images."),
            click.option("--sampler", default="ddim", show_default=True, help="ddim or ddpm."),
            click.option("--steps", default=50, show_default=True, help="Sampler steps (<= T)."),
            click.option("--eta", type=float, help="DDIM eta (default 0: deterministic)."),
            click.option("--seed", default=0, show_default=True, help="Seed of the initial noise."),
            click.option("--solver", help="Run the ODE blocks with this torchdiffeq method (unrolled: must match)."),
            click.option("--solver-steps", type=int, help="Solver steps per block (unrolled: must match)."),
        ]):
            fn = opt(fn)
        return fn

    return wrap
