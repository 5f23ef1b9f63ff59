"""The `cunet-edge` command: a Click group whose subcommands are imported only when run.

Library errors (CunetEdgeError) become one line on stderr and exit status 1; any other exception is
a bug, and becomes one `internal error: ...` line and exit status 3. `--debug` shows the traceback
instead.
"""

from __future__ import annotations

import importlib

import click

from ..errors import CunetEdgeError, one_line

__all__ = ["main", "COMMANDS", "INTERNAL_ERROR_EXIT"]

# Exit statuses: 0 done; 1 bad input or missing setup (`error: ...`); 2 a command-line usage error (click's);
# 3 a bug in cunet-edge (`internal error: ...`), which is never bad input.
INTERNAL_ERROR_EXIT = 3

# name -> "module:attr", imported on use so `cunet-edge --help` stays light.
COMMANDS = {
    "train": "cunet_edge.cli.train:train",
    "import": "cunet_edge.cli.import_cmd:import_",
    "sample": "cunet_edge.cli.sample:sample",
    "evaluate": "cunet_edge.cli.evaluate:evaluate",
    "inspect": "cunet_edge.cli.inspect:inspect",
    "unroll": "cunet_edge.cli.unroll:unroll",
    "prune": "cunet_edge.cli.prune:prune",
    "distill": "cunet_edge.cli.distill:distill",
    "export": "cunet_edge.cli.export:export",
    "bench": "cunet_edge.cli.bench:bench",
    "quantize": "cunet_edge.cli.quantize:quantize",
    "devices": "cunet_edge.cli.devices:devices",
    "estimate": "cunet_edge.cli.estimate:estimate",
    "deploy": "cunet_edge.cli.deploy:deploy",
    "pipeline": "cunet_edge.cli.pipeline:pipeline",
    "report": "cunet_edge.cli.report:report",
}

_SUMMARIES = {
    "train": "Train a continuous U-Net (or baseline U-Net) diffusion model.",
    "import": "Import a model trained elsewhere (own code, diffusers, denoising-diffusion-pytorch) as a checkpoint.",
    "sample": "Draw samples from a checkpoint into a PNG grid.",
    "evaluate": "FID/KID and classifier confidence of a checkpoint's samples.",
    "inspect": "Parameters, MACs per call and solver NFE of an artifact.",
    "unroll": "Unroll each ODE block's solver into fixed explicit steps.",
    "prune": "Remove channels to a MACs/params target (Torch-Pruning), then fine-tune with distillation.",
    "distill": "Progressive distillation to fewer DDIM steps (Salimans & Ho): a checkpoint for e.g. 4 steps.",
    "export": "Export to ONNX (fp32/fp16), a TensorRT engine, or torch-tensorrt.",
    "bench": "Latency per call and per image on a runtime, side by side.",
    "quantize": "INT8 (Q/DQ) from an FP32 ONNX model, calibrated on the diffusion process.",
    "devices": "Device profiles (Jetson/desktop/datacenter GPUs) and what each can run.",
    "estimate": "Roofline latency of an ONNX artifact on a device profile (or calibrated on this CPU).",
    "deploy": "Self-contained bundle of an ONNX artifact for a board; --host runs it over ssh.",
    "pipeline": "Run a TOML recipe of stages (train → unroll → prune → export → quantize → bench → report).",
    "report": "Accuracy-vs-latency report of every artifact under a run (md, html, csv, json, Pareto plot).",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # Listing summaries without importing every command module keeps --help light.
        rows = [(name, _SUMMARIES[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CunetEdgeError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {one_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # usage errors (exit 2), --help and --version, Ctrl-C: click's own handling
        except Exception as exc:  # noqa: BLE001 -- the last line of defence: a bug, never a wall of traceback
            if ctx.obj and ctx.obj.get("debug"):
                raise
            text = str(exc).strip()
            detail = f": {text.splitlines()[0]}" if text else ""
            click.echo(f"internal error: {type(exc).__name__}{detail} (run with --debug for the traceback)", err=True)
            ctx.exit(INTERNAL_ERROR_EXIT)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="cunet-edge")
@click.pass_context
def main(ctx, debug):
    """cunet-edge: make continuous U-Net diffusion models fast on edge GPUs, and measure the cost."""
    ctx.ensure_object(dict)["debug"] = debug
