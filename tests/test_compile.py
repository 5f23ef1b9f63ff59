"""torch.compile on the continuous U-Net: the first call compiles, later calls of the same shape never recompile."""

from __future__ import annotations

import pytest
import torch

from cunet_edge.models import CUNetConfig, SolverConfig, build_model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from an empty compile cache and leaves none behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


class CountingBackend:
    """A torch.compile backend that runs each captured graph eagerly and counts the graphs it is handed."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("unrolled", [False, True], ids=["torchdiffeq", "unrolled"])
def test_compiles_once_no_recompile(unrolled):
    """Checkpoint (torchdiffeq midpoint x1) and unrolled models: same-shape calls reuse the first compilation.

    torchdiffeq's input checks branch on tensor values, so its model compiles in pieces (graph
    breaks are fine); the unrolled model is one static graph (fullgraph). Any recompile after
    the first call raises, e.g. one triggered by a Python counter mutated in forward.
    """
    cfg = CUNetConfig(image_size=8, base_channels=8, channel_mults=(1,), attn_resolutions=(), attn_heads=2,
                      norm_groups=4, time_emb_dim=16, solver=SolverConfig(method="midpoint", unrolled=unrolled))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=unrolled)
    gen = torch.Generator().manual_seed(1)
    calls = [(torch.randn(2, 1, 8, 8, generator=gen), torch.randint(0, 1000, (2,), generator=gen)) for _ in range(4)]
    with torch.no_grad():
        compiled(*calls[0])
        first = backend.graphs
        with torch._dynamo.config.patch(error_on_recompile=True):
            outs = [compiled(x, t) for x, t in calls[1:]]
        wants = [model(x, t) for x, t in calls[1:]]
    assert first >= 1 and backend.graphs == first
    if unrolled:
        assert first == 1
    for got, want in zip(outs, wants):
        torch.testing.assert_close(got, want)
