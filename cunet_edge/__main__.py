"""`python -m cunet_edge` (used by torchrun: `torchrun --nproc-per-node 2 -m cunet_edge train ...`)."""

from .cli import main

main(prog_name="cunet-edge")
