"""Keep the `--help` blocks of docs/commands.md equal to what the commands print.

Every fenced block in the page that starts with `Usage: cunet-edge ...` is the help of that
command. `python scripts/help_blocks.py` rewrites them from the current CLI; `--check` only
reports the blocks that differ (tests/test_cli.py runs it, so the page cannot drift).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from click.testing import CliRunner

from cunet_edge.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
BLOCK = re.compile(r"```\n(Usage: cunet-edge(?P<args>[^\[\n]*)\[OPTIONS\].*?)```", re.S)


def help_text(args: list[str]) -> str:
    """`cunet-edge ARGS --help` as printed on an 80-column terminal."""
    result = CliRunner().invoke(main, [*args, "--help"], prog_name="cunet-edge", terminal_width=80)
    if result.exit_code != 0:
        raise SystemExit(f"cunet-edge {' '.join(args)} --help failed: {result.output}")
    return result.output


def refresh(text: str) -> tuple[str, list[str]]:
    """The page with every help block replaced by the current help, and the commands whose block changed."""
    changed = []

    def replace(m: re.Match) -> str:
        args = m.group("args").split()
        now = help_text(args)
        if now != m.group(1):
            changed.append(" ".join(["cunet-edge", *args]))
        return f"```\n{now}```"

    return BLOCK.sub(replace, text), changed


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    args = parser.parse_args(argv)
    text, changed = refresh(PAGE.read_text())
    if args.check:
        for c in changed:
            print(f"{PAGE.name}: the --help block of `{c}` is stale (run python scripts/help_blocks.py)")
        return 1 if changed else 0
    PAGE.write_text(text)
    print(f"{PAGE}: {len(changed)} block(s) refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
