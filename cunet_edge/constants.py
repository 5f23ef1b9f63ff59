"""Constants shared across layers, defined once."""

from __future__ import annotations

__all__ = ["PROFILE_TIMESTEP"]

# The diffusion timestep of single forward passes that measure or trace the model (profiling,
# pruning's dependency graph, solver sweeps, benchmark feeds): mid-schedule, where every block works.
PROFILE_TIMESTEP = 500
