"""The accuracy-vs-latency report over a run's artifacts (`cunet-edge report`).

- `gather`: artifacts under a run, their lineage, facts and measured variants (metrics.json).
- `measure`: ε against the FP32 reference and drift per stage on common inputs, sample grids,
  roofline estimates per device profile.
- `stage`: `report` (the stage), `ReportConfig`, `pareto_front`.
- `render` and `plot`: report.md, report.html (self-contained), report.csv, report.json, pareto.png.
"""

__all__: list[str] = []
