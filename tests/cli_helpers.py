"""Running the CLI in tests: in process (CliRunner) or as a user would (a subprocess).

A subprocess pays ~3 s of torch import, so bad-input checks run in process (`cli_in_process`,
answered like a subprocess); each command family keeps at least one real `cli_subprocess` check
of what reaches the terminal (exit status, one stderr line, no traceback).
"""

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


def cli_in_process(*args):
    """The same command in this process, answered as cli_subprocess answers (returncode, stdout, stderr).

    Exceptions are not caught: one that would print a traceback fails the test where it is raised.
    """
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, prog_name="cunet-edge")
    return subprocess.CompletedProcess(["cunet-edge", *map(str, args)], res.exit_code, res.stdout, res.stderr)


def assert_one_line_error(proc, match):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert match in lines[0], lines[0]
