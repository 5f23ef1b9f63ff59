"""Device profiles, latency estimates and deployment bundles (installed as cunet_edge.devices).

- `profiles`: `load_profile`, `list_profiles`, `check_request` over `profiles/*.toml`.
- `estimate`: roofline latency of an ONNX artifact on a profile, calibrated on this CPU.
- `deploy`: self-contained bundles for a board (`bundle/` holds the board-side scripts).
"""

__all__: list[str] = []
