"""Hostile inputs: values that parse but are wrong, numbers out of range, paths that hurt, and writes that must
never touch what the user did not ask to be written (issue 19). The fuzz campaign is in tests/test_fuzz.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cunet_edge.records import read_metrics


def test_metrics_updates_from_two_processes_keep_every_section(tmp_path):
    """Two processes each merge N sections into one metrics.json at once: all 2N are there (the read-merge-write
    is locked; without the lock a two-process run lost a quarter of them)."""
    n = 60
    code = textwrap.dedent(f"""
        import sys
        from cunet_edge.records import write_metrics
        for i in range({n}):
            write_metrics(sys.argv[1], f"{{sys.argv[2]}}:{{i}}", {{"i": i, "pad": "x" * 2000}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    sections = read_metrics(tmp_path)
    missing = sorted({f"{t}:{i}" for t in "ab" for i in range(n)} - set(sections))
    assert not missing, f"{len(missing)} of {2 * n} sections lost: {missing[:5]}"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    json.loads((tmp_path / "metrics.json").read_text())
