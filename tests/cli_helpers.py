"""Running the CLI in tests: in process (CliRunner) or as a user would (a subprocess)."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from cunet_edge.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def cli_subprocess(*args):
    """Run the real entry point, as a user would, to see exactly what reaches the terminal."""
    return subprocess.run([sys.executable, "-m", "cunet_edge", *map(str, args)], capture_output=True, text=True)


def assert_one_line_error(proc, match):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert match in lines[0], lines[0]
