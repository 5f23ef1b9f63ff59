"""The prune stage: structured channel pruning of a continuous U-Net or an imported network, then fine-tuning.

Channels are removed physically, through Torch-Pruning's dependency graph rather than rules
written per layer: the graph couples every layer that shares a channel dimension, so the ODE
state x and its velocity v, the skip concatenations, the timestep scale/shift projections and
the GroupNorm groups (pruned evenly in every group) stay consistent, and an ODE function
used at every solver stage is pruned once for all of them.

1. Importance: Taylor |w · ∂L/∂w| of the diffusion loss, its gradients summed over batches
   whose timesteps are stratified over the whole schedule (Diff-Pruning), or L1 magnitude.
2. Target: a fraction of the parent's MACs or parameters, reached in `iterative_steps` rounds
   (importance re-estimated at each, the fine-tuning budget shared between them). The widths
   that pruning ratios give move in jumps (a GroupNorm of 8 groups over 16 channels can only
   keep 8 or 16), and MACs are not monotonic in the ratio, so a grid of ratios is pruned and
   measured, and among those that meet the round's target the one closest to the parent's ε
   on held-out inputs is kept (or the largest).
3. The pruned widths go into the model config; the model is rebuilt from config + weights.
4. Fine-tuning after each round: the training loop (`training.fit`) on the diffusion loss plus
   distillation toward the parent's ε. The artifact records its drift against the parent.

An imported network (`import`, arch "imported") is the user's code: nothing here knows its
layers. `depgraph.plan` first checks that the dependency graph holds for it and refuses, naming
each layer, what Torch-Pruning cannot handle (before any work); the same steps then run on the
groups it may prune, and the config records what pruning changed (`ImportedConfig.pruned`: the
resized tensors' shapes and the layers' width attributes), which the rebuilt network must
reproduce exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from . import depgraph, models
from .artifact import check_output_path
from .checkpoint import load_checkpoint, save_checkpoint
from .config import check_choice, check_positive, to_dict
from .constants import PROFILE_TIMESTEP
from .data import load_images
from .diffusion import alphas_cumprod, diffusion_loss, q_sample, to_model_range, training_target
from .drift import drift_samples_for, rel_err, schedule_inputs, torch_drift
from .errors import ConfigError, CunetEdgeError, import_backend
from .kinds import STAGE_IO
from .models import build_model, profile_model
from .records import DRIFT, PRUNING, SOLVER, TRAINED_SOLVER
from .timing import PhaseClock
from .training import fit
from .limits import check_seed, check_threads

__all__ = ["IMPORTANCES", "SCOPES", "SELECTIONS", "PruneConfig", "prune"]

IMPORTANCES = ("taylor", "l1")
SCOPES = ("global", "local")
SELECTIONS = ("least-error", "largest")
INSTALL_HINT = "pip install 'cunet-edge[prune]' (or pip install 'torch-pruning>=1.5')"


@dataclass(frozen=True)
class PruneConfig:
    """Target, importance, how the widths are searched, and the fine-tuning that follows."""

    target_macs: float | None = None
    target_params: float | None = None
    importance: str = "taylor"
    scope: str = "global"  # global: one ranking across layers; local: the same ratio in every layer
    iterative_steps: int = 1  # rounds of prune + fine-tune (finetune_steps shared between them)
    ratio_step: float = 0.01  # grid of pruning ratios scanned at each step
    coarse_step: float = 0.1  # first pass over the grid at this spacing, refined where the target is met (0: all)
    select: str = "least-error"  # among ratios that meet the step's target: least ε error, or largest model
    importance_batches: int = 8
    importance_batch: int | None = None  # images per importance batch; None: by the image size (see below)
    finetune_steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    distill_weight: float = 20.0  # best FID of 1, 10, 20, 100 on digits (docs/results/2026-11-27-pruning.md)
    seed: int = 0
    val_n: int = 64
    screen_n: int = 8  # held-out inputs each candidate ratio is first measured on (0: all); see _prune_step
    drift_samples: int | None = None  # sampling runs of the drift; None: by the image size (drift.drift_samples_for)
    drift_sampler_steps: int = 20
    keep: tuple[str, ...] = ()  # modules of an imported network to leave whole (paths inside the network)

    def __post_init__(self):
        check_seed(self.seed)
        given = [n for n in ("target_macs", "target_params") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one target: --target-macs F or --target-params F (a fraction in (0, 1))")
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"{given[0]} must be a fraction of the parent's in (0, 1), got {value!r}")
        check_choice("importance", self.importance, IMPORTANCES)
        check_choice("scope", self.scope, SCOPES)
        check_choice("select", self.select, SELECTIONS)
        for name in ("iterative_steps", "importance_batches", "batch_size", "lr", "val_n", "drift_sampler_steps"):
            check_positive(name, getattr(self, name))
        if self.drift_samples is not None:
            check_positive("drift_samples", self.drift_samples)
        if self.importance_batch is not None:
            check_positive("importance_batch", self.importance_batch)
        for name in ("finetune_steps", "warmup_steps", "distill_weight", "screen_n", "coarse_step"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not 0 < self.ratio_step < 1:
            raise ConfigError(f"ratio_step must be in (0, 1), got {self.ratio_step}")
        if not self.coarse_step < 1:
            raise ConfigError(f"coarse_step must be in [0, 1) (0: every ratio of the grid), got {self.coarse_step}")
        if not isinstance(self.keep, tuple) or not all(isinstance(k, str) and k.strip() for k in self.keep):
            raise ConfigError(f"keep must be module paths of the imported network, got {self.keep!r}")

    def importance_batch_for(self, image_size: int) -> int:
        """Images per batch of the Taylor importance: importance_batch if given, else batch_size up to 16 px and
        fewer as the image grows (images x pixels constant, at least MIN_IMPORTANCE_BATCH): at 64 px, 4 images a
        batch instead of 64. The importance of 8 batches of 64 images at 64 px took over 7 CPU minutes, most of the
        stage (docs/results/2026-12-02-stage-costs-64.md); every batch still draws one timestep per stratum of the
        schedule."""
        if self.importance_batch is not None:
            return self.importance_batch
        by_pixels = round(self.batch_size * (16 / image_size) ** 2)
        return max(min(MIN_IMPORTANCE_BATCH, self.batch_size), min(self.batch_size, by_pixels))

    @property
    def metric(self) -> str:
        return "macs" if self.target_macs is not None else "params"

    @property
    def target(self) -> float:
        return self.target_macs if self.target_macs is not None else self.target_params


def _load_source(src, cfg: PruneConfig):
    ckpt = load_checkpoint(src, kinds=STAGE_IO["prune"].accepts)
    arch = ckpt.config.model.arch
    if arch not in ("cunet", "imported"):
        raise ConfigError(f"{src} is a {arch!r} model; prune needs a continuous U-Net (cunet) or an imported network")
    if cfg.keep and arch != "imported":
        raise ConfigError(f"--keep names modules of an imported network; {src} is a continuous U-Net, whose "
                          "attention and output layers prune's own rules keep whole")
    return ckpt


def _imported(model) -> bool:
    return model.cfg.arch == "imported"


def _check_reachable(ckpt, cfg: PruneConfig, base: dict) -> float:
    """Refuse, before any work, a target below the model with every width at its floor; returns that floor."""
    m = ckpt.config.model
    g = m.norm_groups
    floors = {"enc_widths": g, "dec_widths": g, "ode_hidden": g, "up_widths": 1, "v0_hidden": 1}
    smallest = dataclasses.replace(m, **{k: tuple(floors[k] for _ in m.layer_widths[k]) for k in models.LAYER_WIDTHS})
    floor = profile_model(build_model(smallest), m)[cfg.metric] / base[cfg.metric]
    if cfg.target < floor:
        raise ConfigError(
            f"target-{cfg.metric} {cfg.target:g} cannot be reached: with every width at its floor (norm_groups = {g} "
            f"channels where a GroupNorm reads it, 1 elsewhere) the model keeps {floor:.3f}x the {cfg.metric}; a "
            "smaller target would leave a layer with no channels or break its GroupNorm groups")
    return floor


@contextlib.contextmanager
def _traceable(model):
    """Run the ODE blocks through one unrolled midpoint step while the dependency graph is traced
    (an imported network: `depgraph.traceable`).

    torchdiffeq flattens the (x, v) state into one vector, which hides the channel coupling; the
    explicit loop calls the same modules on the same tensors, so the coupling it shows holds for
    every solver. Midpoint, because its x(1) reads an ODE-function evaluation (Euler's one step
    would leave the function off the path to the output, and so out of the graph).
    """
    if _imported(model):
        with depgraph.traceable(model):
            yield
        return
    blocks = model.ode_blocks()
    saved = [b.solver for b in blocks]
    for b in blocks:
        b.solver = dataclasses.replace(b.solver, method="midpoint", steps=1, adjoint=False, unrolled=True)
    try:
        yield
    finally:
        for b, s in zip(blocks, saved):
            b.solver = s


def _importance(tp, cfg: PruneConfig):
    return (tp.importance.GroupTaylorImportance() if cfg.importance == "taylor"
            else tp.importance.GroupMagnitudeImportance(p=1))


def _pruner(tp, model, ratio: float, cfg: PruneConfig, plan: depgraph.Plan | None = None):
    """Torch-Pruning's MetaPruner over the U-Net, with what must stay whole left out (an imported network:
    as its `depgraph.plan` says)."""
    import torch

    if _imported(model):
        return depgraph.metapruner(tp, model, plan, importance=_importance(tp, cfg), ratio=ratio,
                                   global_pruning=cfg.scope == "global")
    m = model.cfg
    # The timestep MLP feeds every block (tiny); the head's conv writes the image channels; the
    # qkv convs keep q/k/v and the heads whole (tracing their reshape into heads hangs the graph).
    ignored = [model.time_mlp, model.head[-1]] + [a.qkv for a in model.modules() if isinstance(a, models.SelfAttention)]
    # emb_proj yields scale and shift (chunked in two) for a GroupNorm: prune both halves, every group alike.
    groups = {b.func.emb_proj: 2 * m.norm_groups for b in model.ode_blocks()}
    p = next(model.parameters())
    example = (torch.zeros(1, m.in_channels, m.image_size, m.image_size, dtype=p.dtype, device=p.device),
               torch.full((1,), PROFILE_TIMESTEP, device=p.device))
    importance = _importance(tp, cfg)
    with _traceable(model):
        return tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                    global_pruning=cfg.scope == "global", ignored_layers=ignored,
                                    in_channel_groups={}, out_channel_groups=groups, round_to=None)


MIN_IMPORTANCE_BATCH = 4
IMPORTANCE_PIXELS = 64 * 16 * 16  # images x pixels per backward pass of the importance (a 16-px batch of 64)


def _micro_batch(image_size: int, n: int) -> int:
    """Images per backward pass of the Taylor importance: the whole batch at 16 px, fewer as the image grows (the
    activations a backward pass keeps grow with images x pixels: 64 images at 64 px took the stage past 7 GiB)."""
    return max(1, min(n, IMPORTANCE_PIXELS // (image_size * image_size)))


def _taylor_gradients(model, images, train_cfg, cfg: PruneConfig, step: int, micro: int | None = None) -> None:
    """Sum ∂L/∂w of the diffusion loss over batches, each with one timestep per stratum of the schedule.

    Each batch's loss is backpropagated in micro-batches of `micro` images (default: _micro_batch), each weighted
    by its share of the batch, so the gradient is the batch's own and the memory one micro-batch's."""
    import torch

    device = next(model.parameters()).device
    diffusion = train_cfg.diffusion
    abar = torch.tensor(alphas_cumprod(diffusion), dtype=torch.float32)
    T, n = abar.shape[0], cfg.importance_batch_for(images.shape[-1])
    g = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    model.zero_grad(set_to_none=True)
    for _ in range(cfg.importance_batches):
        x0 = images[torch.randint(0, images.shape[0], (n,), generator=g)].to(device)
        x0 = to_model_range(x0, diffusion.data_range)
        t = ((torch.arange(n) + torch.rand(n, generator=g)) * T / n).long().clamp(max=T - 1).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        x_t = q_sample(x0, t, noise, abar)
        target = training_target(diffusion.prediction, x0, noise, abar[t])
        step_n = micro or _micro_batch(x0.shape[-1], n)
        for i in range(0, n, step_n):
            part = slice(i, i + step_n)
            loss = torch.nn.functional.mse_loss(model(x_t[part], t[part]), target[part])
            (loss * (len(t[part]) / n)).backward()
    for p in model.parameters():  # unreached by the loss (one Euler step never reads the ODE function): no importance
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _candidate(tp, model, ratio: float, cfg: PruneConfig, plan: depgraph.Plan | None = None):
    """A copy of `model` (with its gradients, for Taylor importance) pruned at `ratio`."""
    cand = copy.deepcopy(model)
    for p, q in zip(model.parameters(), cand.parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    if not _imported(model):
        _pruner(tp, cand, ratio, cfg).step()
        return cand
    try:  # the checks of depgraph.plan passed: a failure here is one they missed, said as such
        _pruner(tp, cand, ratio, cfg, plan).step()
    except Exception as exc:  # noqa: BLE001 -- Torch-Pruning on the user's network
        raise ConfigError(f"Torch-Pruning failed on the imported network at pruning ratio {ratio:g}: "
                          f"{depgraph.first_line(exc)}") from None
    depgraph.check_runs(cand, f"pruned at ratio {ratio:g}")
    return cand


SCREEN_HEAD = 4  # screened candidates re-measured on all held-out inputs (the best by the screening figure)


def _subset(val, ref, n: int):
    """n of the held-out inputs spread evenly over them (so over the timesteps), and the parent's ε on them."""
    import torch

    idx = torch.unique(torch.linspace(0, len(ref) - 1, n).round().long())
    return tuple(v[idx] for v in val), ref[idx]


def _grid(cfg: PruneConfig) -> tuple[list[float], int]:
    """The fine grid of pruning ratios (ratio_step apart) and how many fine steps one coarse step spans (1: no
    coarse pass)."""
    fine = [round(cfg.ratio_step * i, 6) for i in range(1, round(1 / cfg.ratio_step))]
    return fine, max(1, round(cfg.coarse_step / cfg.ratio_step)) if cfg.coarse_step else 1


def _ratios_to_scan(fine: list[float], every: int, meets) -> list[float]:
    """The ratios to prune and count, in the order they are needed: `meets(r)` prunes ratio r and says whether it
    meets the goal.

    every = 1: the whole grid. Otherwise a coarse pass (every `every`-th ratio of the grid, and its last) runs in
    increasing order until a ratio meets the goal; then every fine ratio in the coarse interval below that ratio
    and in the one above it is scanned. MACs and parameters fall as the ratio grows, in jumps and not always
    monotonically (GroupNorm groups), so the goal is first met somewhere in the interval below, and the candidates
    the selection prefers (the least error, or the most kept) sit near that point; the interval above holds the
    ratios a non-monotonic jump could still favour. Each ratio costs a copy of the model, Torch-Pruning's
    dependency trace and a MACs count: the whole grid of 99 was most of the stage at 64 px
    (docs/results/2026-12-02-stage-costs-64.md). If no coarse ratio meets the goal, the scan ends there."""
    if every <= 1:
        for r in fine:
            meets(r)
        return fine
    coarse = fine[every - 1::every]
    if coarse[-1] != fine[-1]:
        coarse.append(fine[-1])
    done = []
    for i, r in enumerate(coarse):
        done.append(r)
        if meets(r):
            lo = coarse[i - 1] if i else 0.0
            hi = coarse[i + 1] if i + 1 < len(coarse) else 1.0
            refine = [f for f in fine if lo < f < hi and f != r]
            for f in refine:
                meets(f)
            return done + refine
    return done


class _Seconds(dict):
    """Seconds spent per part of a loop, summed over its iterations (wall time)."""

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


def _prune_step(tp, model, goal: float, base: dict, val, ref, cfg: PruneConfig, plan: depgraph.Plan | None = None):
    """Scan the ratios (see _ratios_to_scan); of the candidates meeting `goal` (fraction of base) keep the one
    `cfg.select` says.

    Every candidate meeting the goal is first measured on `cfg.screen_n` of the held-out inputs; the SCREEN_HEAD
    best by that figure are pruned again and measured on all of them, and the choice is made among those (the
    scan's cost was candidates × held-out inputs × the model's cost: most of the stage at 64 px). With
    screen_n = 0, or as many as the held-out inputs, every candidate is measured on all of them.
    """
    import torch

    fine, every = _grid(cfg)
    screening = 0 < cfg.screen_n < len(ref)
    sval, sref = _subset(val, ref, cfg.screen_n) if screening else (val, ref)
    seconds = _Seconds()

    def key(row):
        return (-row["eps_rel_err"], row[cfg.metric]) if cfg.select == "least-error" else \
            (row[cfg.metric], -row["eps_rel_err"])

    rows, kept = [], {}  # kept: the candidates measured on all inputs and still in the running (ratio -> model)

    def meets(r: float) -> bool:
        nonlocal kept
        with seconds.part("prune"):
            cand = _candidate(tp, model, r, cfg, plan)
        with seconds.part("count"):
            cost = profile_model(cand, model.cfg, meta=True)  # shapes only where it can: the same count
        row = {"ratio": r, "macs": cost["macs"] / base["macs"], "params": cost["params"] / base["params"]}
        if row[cfg.metric] <= goal:
            with seconds.part("screen" if screening else "measure"), torch.no_grad():
                row["eps_rel_err"] = rel_err(cand(*sval), sref)
            row["eps_inputs"] = len(sref)
            if not screening and (not kept or key(row) > key(next(x for x in rows if x["ratio"] in kept))):
                kept = {r: cand}  # one model held at a time, as before
        rows.append(row)
        return row[cfg.metric] <= goal

    _ratios_to_scan(fine, every, meets)
    rows.sort(key=lambda row: row["ratio"])
    meeting = [row for row in rows if "eps_rel_err" in row]
    if not meeting:
        closest = min(r[cfg.metric] for r in rows)
        other = "local" if cfg.scope == "global" else "global"
        raise ConfigError(f"no pruning ratio on the grid brings the {cfg.metric} to {goal:.3f}x of the parent's "
                          f"(the least reached: {closest:.3f}x); try --scope {other}, a finer --ratio-step, "
                          "or a larger target")
    if screening:  # the head by the screening figure, measured again on all inputs
        with seconds.part("measure"):
            for row in sorted(meeting, key=key, reverse=True)[:SCREEN_HEAD]:
                cand = kept[row["ratio"]] = _candidate(tp, model, row["ratio"], cfg, plan)
                with torch.no_grad():
                    row["eps_rel_err"] = rel_err(cand(*val), ref)
                row["eps_inputs"] = len(ref)
    best = max((row for row in meeting if row["ratio"] in kept), key=key)
    evaluations = {"screened": len(meeting) if screening else 0, "screen_inputs": len(sref) if screening else 0,
                   "full": min(len(meeting), SCREEN_HEAD) if screening else len(meeting), "full_inputs": len(ref)}
    scan = {"ratio_step": cfg.ratio_step, "coarse_step": cfg.ratio_step * every if every > 1 else 0,
            "grid": len(fine), "pruned": len(rows), "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    return kept[best["ratio"]], {"goal": goal, **best, "candidates": rows, "evaluations": evaluations, "scan": scan}


def _pruned_config(m, model):
    """The model config with the widths the pruned modules really have (an imported network: what pruning changed
    in it, against the network its arguments build)."""
    if m.arch == "imported":
        import torch

        with torch.random.fork_rng(devices=[]):  # building the nominal network draws its initial weights
            nominal = models.build_network(m)
        return dataclasses.replace(m, pruned=models.pruned_structure(model.net, nominal))
    levels = len(m.widths)
    dec = {levels - 1 - i: lv for i, lv in enumerate(model.decoder)}  # the decoder runs coarsest first
    blocks = model.ode_blocks()
    return dataclasses.replace(
        m,
        enc_widths=tuple(lv.block.func.conv2.out_channels for lv in model.encoder),
        dec_widths=tuple(dec[lv].merge.out_channels for lv in range(levels)),
        up_widths=tuple(dec[lv].resample.out_channels for lv in range(levels - 1)),
        ode_hidden=tuple(b.func.conv1.out_channels for b in blocks),
        v0_hidden=tuple(b.init_velocity.conv1.out_channels for b in blocks),
    )


def _rebuild(model_cfg, state: dict, device):
    """A fresh model from the config, loaded strictly with `state`: the pruned widths must be all it takes."""
    model = build_model(model_cfg).to(device)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_rebuilt(work, rebuilt, val) -> None:
    """An imported network's config must rebuild exactly the network pruning left (same ε on held-out inputs)."""
    import torch

    with torch.no_grad():
        err = rel_err(rebuilt(*val), work.eval()(*val))
    if not err <= 1e-6:
        raise ConfigError(f"the pruned imported network does not rebuild from its config (ε differs by {err:.2e}): "
                          "pruning changed something in it that the config does not record")


def _finetune(model, teacher, images, train_cfg, cfg: PruneConfig, steps: int, round_: int,
              progress: bool) -> tuple[dict, float]:
    """The training loop on the diffusion loss + distill_weight × ‖ε − ε_parent‖²; returns (EMA, last loss)."""
    import functools

    import torch


    ft = dataclasses.replace(train_cfg, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size,
                             warmup_steps=min(cfg.warmup_steps, steps), seed=cfg.seed + round_ - 1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=train_cfg.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    loss_fn = functools.partial(diffusion_loss, prediction=train_cfg.diffusion.prediction, teacher=teacher,
                                distill_weight=cfg.distill_weight)
    label = "finetune" if cfg.iterative_steps == 1 else f"finetune {round_}/{cfg.iterative_steps}"
    last = fit(ft, model, opt, ema, images, loss_fn=loss_fn, progress=progress, label=label)
    return ema, last


def _validation(parent, cfg: PruneConfig, device) -> tuple:
    """Held-out noisy test images over the schedule (not the drift's seed) and the parent's ε on them."""
    import torch


    x, t = schedule_inputs(parent.config, cfg.val_n, cfg.seed + 1)
    val = (x.to(device), t.to(device))
    with torch.no_grad():
        return val, parent.model(*val)


@contextlib.contextmanager
def _users_code(plan: depgraph.Plan | None, what: str):
    """An imported network's own code failing in training (e.g. a backward pass it does not support) is a one-line
    ConfigError, raised before anything is written."""
    if plan is None:
        yield
        return
    try:
        yield
    except CunetEdgeError:
        raise
    except Exception as exc:  # noqa: BLE001 -- the user's network: any failure of its code, said in one line
        raise ConfigError(f"the imported network fails while {what}: {depgraph.first_line(exc)} (an unrolled "
                          "network trains by plain backprop; --importance l1 and --finetune-steps 0 need no "
                          "gradients)") from None


def _finetune_shares(cfg: PruneConfig) -> list[int]:
    """Fine-tuning steps after each pruning step: the budget split evenly, the remainder last."""
    share = cfg.finetune_steps // cfg.iterative_steps
    return [share] * (cfg.iterative_steps - 1) + [cfg.finetune_steps - share * (cfg.iterative_steps - 1)]


def _prune_and_finetune(tp, parent, images, base, cfg: PruneConfig, device, progress: bool,
                        plan: depgraph.Plan | None = None) -> tuple:
    """K rounds of: importance (re-estimated), prune toward the target (k/K of the way), rebuild, fine-tune a share.

    Returns the model, its config, a record per round and the drift right after the last pruning.
    """
    import torch


    val, ref = _validation(parent, cfg, device)
    model, rounds = copy.deepcopy(parent.model).requires_grad_(True), []
    for k, steps in enumerate(_finetune_shares(cfg), 1):
        t0 = time.perf_counter()
        clock = PhaseClock()
        if cfg.importance == "taylor":
            with _users_code(plan, "computing Taylor importance (the diffusion loss's gradients)"):
                _taylor_gradients(model, images, parent.config, cfg, k)
        clock.lap("importance")
        goal = 1 - (1 - cfg.target) * k / cfg.iterative_steps
        work, record = _prune_step(tp, model, goal, base, val, ref, cfg, plan)
        clock.lap("scan")
        model_cfg = _pruned_config(parent.config.model, work)
        model = _rebuild(model_cfg, work.state_dict(), device)
        if plan is not None:
            _check_rebuilt(work, model, val)
        clock.lap("rebuild")
        if k == cfg.iterative_steps:
            after_pruning = _drift(model, parent, cfg)
            clock.lap("drift")
        t1 = time.perf_counter()
        # prune: this round up to the fine-tuning; phases: its parts (wall and CPU seconds, for scale studies)
        record.update(finetune_steps=steps, seconds={"prune": t1 - t0},
                      phases={"wall_s": clock.laps, "cpu_s": clock.cpu_laps})
        if steps:
            with _users_code(plan, "fine-tuning"):
                ema, record["finetune_last_loss"] = _finetune(model, parent.model, images, parent.config, cfg, steps,
                                                              k, progress)
            model = _rebuild(model_cfg, ema, device)
            with torch.no_grad():
                record["eps_rel_err_after_finetune"] = rel_err(model(*val), ref)
        record["seconds"]["finetune"] = time.perf_counter() - t1
        rounds.append(record)
    return model, model_cfg, rounds, after_pruning


def _drift(model, parent, cfg: PruneConfig) -> dict:
    return torch_drift(model, parent.model, parent.config, n_inputs=cfg.val_n,
                       samples=drift_samples_for(parent.config.model.image_size, cfg.drift_samples),
                       sampler_steps=cfg.drift_sampler_steps, seed=cfg.seed)


def _widths(model_cfg) -> dict:
    """The pruned widths: per layer kind of a continuous U-Net, or the changed width attributes of an imported
    network's layers (module path → attribute → value)."""
    if model_cfg.arch == "imported":
        return model_cfg.pruned.get("attributes", {})
    return model_cfg.layer_widths


def _record(cfg: PruneConfig, base: dict, cost: dict, model_cfg, rounds: list[dict], floor: float | None,
            plan: depgraph.Plan | None = None) -> dict:
    """What the manifest keeps of the pruning: target, cost before and after, widths, rounds, fine-tuning, times."""
    return {
        "config": to_dict(cfg), "metric": cfg.metric, "target": cfg.target, "floor": floor,
        "importance": cfg.importance, "scope": cfg.scope, "iterative_steps": rounds,
        "before": {k: base[k] for k in ("params", "macs", "nfe_per_call")},
        "after": {k: cost[k] for k in ("params", "macs", "nfe_per_call")},
        "macs_ratio": cost["macs"] / base["macs"], "params_ratio": cost["params"] / base["params"],
        "widths": _widths(model_cfg),
        "depgraph": plan.as_dict() if plan is not None else None,
        "finetune": {"steps": cfg.finetune_steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
                     "distill_weight": cfg.distill_weight, "last_loss": rounds[-1].get("finetune_last_loss")},
        "seconds": {"prune": sum(r["seconds"]["prune"] for r in rounds),
                    "finetune": sum(r["seconds"]["finetune"] for r in rounds)},
    }


def prune(src, cfg: PruneConfig, out: str | Path, *, progress: bool = True, threads: int | None = None):
    """Stage: a continuous U-Net or imported model artifact → the same network with channels removed, fine-tuned."""
    import torch

    tp = import_backend("torch_pruning", "torch-pruning", INSTALL_HINT)
    check_output_path(out)
    if threads is not None:
        check_threads(threads)
    parent = _load_source(src, cfg)
    base = profile_model(parent.model, parent.config.model)
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parent.model.to(device).requires_grad_(False)
    plan = floor = None
    if _imported(parent.model):  # every refusal before any work
        plan = depgraph.plan(tp, parent.model, cfg.keep)
    else:
        floor = _check_reachable(parent, cfg, base)
    images = load_images(parent.config.data, "train")[0].to(device)
    t0 = time.perf_counter()
    model, model_cfg, rounds, after_pruning = _prune_and_finetune(tp, parent, images, base, cfg, device, progress,
                                                                  plan)
    # Without fine-tuning after the last pruning the model is the one just measured: its drift is not run twice.
    drift = (after_pruning if not rounds[-1]["finetune_steps"] else _drift(model, parent, cfg)) | \
        {"after_pruning": after_pruning}
    record = _record(cfg, base, profile_model(model, model_cfg), model_cfg, rounds, floor, plan)
    record["seconds"]["total"] = time.perf_counter() - t0
    man = parent.artifact.manifest
    extra = {PRUNING: record, DRIFT: drift}
    if SOLVER in man:  # an unrolled parent: the baked-in solver travels on
        extra |= {SOLVER: man[SOLVER], TRAINED_SOLVER: man.get(TRAINED_SOLVER)}
    train_cfg = dataclasses.replace(parent.config, model=model_cfg)
    kind = STAGE_IO["prune"].produces(parent.artifact.kind)
    return save_checkpoint(Path(out), train_cfg, model.state_dict(), step=man.get("train_step", 0), train_state=None,
                           kind=kind, stage="prune", parent=parent.artifact, extra=extra)
