"""Two processes merging N sections each into one metrics.json at once: the old unlocked read-merge-write against
`records.write_metrics` (under a filelock), side by side in one run.

    python benchmarks/metrics_race.py [N]     # default 150: 300 sections in all

Prints how many sections each way kept (docs/results/2026-12-02-hostile-inputs.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

WRITER = """
import sys
from pathlib import Path
from cunet_edge.artifact import write_json_atomic
from cunet_edge.records import METRICS, read_metrics, write_metrics

def unlocked(folder, section, metrics):  # what write_metrics did before the lock
    try:
        current = read_metrics(folder)
    except ValueError:
        current = {}
    current[section] = metrics
    write_json_atomic(Path(folder) / METRICS, current)

write = unlocked if sys.argv[3] == "unlocked" else write_metrics
for i in range(int(sys.argv[4])):
    write(sys.argv[1], f"{sys.argv[2]}:{i}", {"i": i, "pad": "x" * 2000})
"""


def main(n: int) -> None:
    for mode in ("unlocked", "locked"):
        folder = tempfile.mkdtemp()
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, folder, tag, mode, str(n)]) for tag in "ab"]
        if [p.wait() for p in procs] != [0, 0]:
            raise SystemExit(f"{mode}: a writer failed")
        kept = len(json.loads((Path(folder) / "metrics.json").read_text()))
        print(f"{mode}: {kept} of {2 * n} sections kept, {2 * n - kept} lost")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150)
