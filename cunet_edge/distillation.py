"""Progressive distillation (Salimans & Ho, 2022): halve a checkpoint's DDIM step count, round after round.

Each round trains a student, initialised from its teacher (the previous round's student; the input checkpoint
in round 1), so that ONE DDIM step of the student from t to t'' lands where TWO DDIM steps of the teacher
(t → t' → t'') land. The grids are the DDIM sampler's own, at `trailing` spacing: the trailing grid of N steps is
every other point of the grid of 2N steps (T/N apart, the last step going to the clean image), so the teacher of
a round is used on exactly the timesteps it was distilled for, and the student is sampled with
`--sampler ddim --steps N --spacing trailing` (the uniform grid does not nest when halved).

With `factor` F > 2 a round divides the steps by F: one student step replaces F teacher steps on the trailing grid
of F·N steps (which nests the grid of N the same way), so fewer rounds compound a previous student's errors (as in
TRACT, Berthelot et al., 2023); the teacher then costs F forward passes per training image instead of two.

The target: with z_t = α_t x + σ_t ε for a training image x, the teacher's two steps give z_t''; the x̃ with
which one DDIM step t → t'' gives z_t'' is x̃ = (z_t'' − (σ_t''/σ_t) z_t) / (α_t'' − (σ_t''/σ_t) α_t)
(= z_t'' when t'' is the clean image). The teacher's steps clip x̂ as the sampler does.

The loss (`weighting`; "auto" picks by what the network predicts, DiffusionConfig.prediction):
- "snr-trunc" (auto for v or x0): the paper's truncated-SNR weighting, max(SNR_t, 1) · ‖x̃ − x̂_θ‖².
- "epsilon" (auto for ε): the plain MSE to the implied ε̃ = (z_t − α_t x̃) / σ_t, which is SNR_t · ‖x̃ − x̂_θ‖² in
  x space. The truncated-SNR weight would put max(1, 1/SNR) on the ε error, 2.5·10⁴ at t = 999 of the linear
  schedule: the first step would take all the gradient (the instability the paper reports for ε at low SNR).
- "landing": the squared distance between where the student's one step lands and where the teacher's two steps
  land, ‖c (x̂_θ − x̃)‖² with c = α_t'' − (σ_t''/σ_t) α_t: the error the sampler actually carries on. For an
  ε-model on few steps this weighs the high-noise steps, whose ε errors the step amplifies (by 8 in the first of
  4 trailing steps of the linear schedule), far more than the plain ε MSE does.

The training loop, EMA and progress bar are `training.fit`'s. The output is an ordinary `checkpoint` (the
teacher's TrainConfig, architecture and solver unchanged, sample_steps set to the final step count); its
manifest's `distillation` section records the settings and each round. While a round runs, the artifact holds
the current student's EMA and, under train_state/, the raw student, the optimizer and the round's teacher, so a
rerun with the same settings continues where a killed run last saved.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from .artifact import Artifact, check_output_path
from .checkpoint import LR_SCHEDULES, STATE_DIR, load_checkpoint, load_train_state, save_checkpoint
from .config import check_choice, check_positive, to_dict
from .data import load_images
from .diffusion import sample, sampling_schedule
from .errors import ArtifactError, ConfigError
from .evaluation import evaluate_images
from .kinds import STAGE_IO
from .models import build_model
from .training import fit, training_model_config

__all__ = ["DistillConfig", "distill", "round_steps", "SECTION"]

SECTION = "distillation"
TEACHER = "teacher.safetensors"
WEIGHTINGS = ("auto", "epsilon", "snr-trunc", "landing")


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run: the step counts, and the training loop of each round."""

    from_steps: int = 64
    to_steps: int = 4
    train_steps: int = 500  # optimizer steps per round
    lr: float = 1e-4  # 5e-4 made the early rounds worse on the digits model (docs/results/2026-12-02-distill.md)
    lr_schedule: str = "cosine"  # per round, after the warm-up: cosine down to 10% of lr, or constant
    weighting: str = "auto"  # the loss: auto (by prediction), epsilon, snr-trunc, landing (see the module doc)
    batch_size: int = 64
    warmup_steps: int = 20
    ema_decay: float = 0.995
    seed: int = 0
    save_every: int = 100
    fid_n: int = 0  # samples for the FID after each round (0: none)
    factor: int = 2  # steps divided per round: the teacher takes `factor` DDIM steps per student step (2: the paper's)

    def __post_init__(self):
        for name in ("from_steps", "to_steps", "train_steps", "lr", "batch_size", "save_every"):
            check_positive(name, getattr(self, name))
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("fid_n", self.fid_n, allow_zero=True)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        if self.factor < 2 or self.factor > MAX_FACTOR:
            raise ConfigError(f"factor must be 2 to {MAX_FACTOR} (steps divided per round), got {self.factor}")
        round_steps(self.from_steps, self.to_steps, self.factor)


MAX_FACTOR = 64  # teacher steps per student step: each costs one forward pass per training image


def round_steps(from_steps: int, to_steps: int, factor: int = 2) -> list[int]:
    """The student step counts of the rounds: from_steps/factor, from_steps/factor², ..., to_steps."""
    if to_steps >= from_steps:
        raise ConfigError(f"to_steps {to_steps} must be below from_steps {from_steps}")
    out, n = [], from_steps
    while n > to_steps and n % factor == 0:
        n //= factor
        out.append(n)
    if n != to_steps:
        verb = "halve" if factor == 2 else f"divide by {factor}"
        raise ConfigError(f"from_steps {from_steps} does not {verb} down to to_steps {to_steps} "
                          f"(use a multiple by a power of {factor}, e.g. {to_steps * factor ** 2})")
    return out


def _grid(diffusion, steps: int):
    """(timesteps, ᾱ at each, then 1.0 for the clean image) of the DDIM trailing grid of `steps` steps."""
    ts, levels = sampling_schedule(diffusion, steps, sampler="ddim", spacing="trailing")
    return [int(t) for t in ts], [float(a) for a in levels] + [1.0]


def _round_grid(diffusion, student_steps: int, factor: int = 2):
    """Per student step i: (t, ᾱ_t, t_1, ᾱ_1, ..., t_{f-1}, ᾱ_{f-1}, ᾱ_t''), the teacher's grid of f·N steps
    nesting the student's N (f = factor: the teacher's f steps t → t_1 → ... → t'' replace the student's one)."""
    ts, a = _grid(diffusion, student_steps)
    tt, ta = _grid(diffusion, factor * student_steps)
    if tt[::factor] != ts:
        raise ConfigError(f"the trailing grids of {student_steps} and {factor * student_steps} steps do not nest at "
                          f"diffusion.timesteps {diffusion.timesteps}; distill to a step count that divides it")
    rows = []
    for i in range(student_steps):
        inner = [v for k in range(1, factor) for v in (tt[factor * i + k], ta[factor * i + k])]
        rows.append((ts[i], a[i], *inner, a[i + 1]))
    return rows


def _eps_x0(out, z, a, prediction: str):
    """(ε̂, x̂) from the network output at z with ᾱ = a (a tensor broadcast over rows)."""
    if prediction == "epsilon":
        return out, (z - (1 - a).sqrt() * out) / a.sqrt()
    if prediction == "v":
        return (1 - a).sqrt() * z + a.sqrt() * out, a.sqrt() * z - (1 - a).sqrt() * out
    return (z - a.sqrt() * out) / (1 - a).sqrt(), out


def _ddim_step(model, z, t, a_t, a_s, prediction: str, clip):
    """One deterministic DDIM step from z at t (ᾱ = a_t) to ᾱ = a_s, x̂ clipped as the sampler clips it."""
    eps, x0 = _eps_x0(model(z, t), z, a_t, prediction)
    if clip:
        x0 = x0.clamp(*clip)
        eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def _loss_fn(teacher, grid, prediction: str, clip, weighting: str = "auto"):
    """The distillation loss on a batch of training images, as `fit` calls it: loss_fn(net, x0, abar, generator)."""
    import torch

    if weighting == "auto":
        weighting = "epsilon" if prediction == "epsilon" else "snr-trunc"

    table = torch.tensor(grid, dtype=torch.float64)  # rows: t, ᾱ_t, (t_k, ᾱ_k) per inner teacher step, ᾱ_t''
    inner = (table.shape[1] - 3) // 2

    def loss_fn(net, x, abar, generator=None):
        b = x.shape[0]
        i = torch.randint(0, len(grid), (b,), generator=generator)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        rows = table[i].to(x.device)
        col = lambda k: rows[:, k].to(x.dtype).view(-1, 1, 1, 1)  # noqa: E731
        t, a_t, a_2 = rows[:, 0].long(), col(1), col(2 * inner + 2)
        z = a_t.sqrt() * x + (1 - a_t).sqrt() * noise
        with torch.no_grad():  # the teacher's steps t → t_1 → ... → t'' (two in the paper's rounds)
            z2, t_k, a_k = z, t, a_t
            for k in range(inner):
                t_n, a_n = rows[:, 2 + 2 * k].long(), col(3 + 2 * k)
                z2, t_k, a_k = _ddim_step(teacher, z2, t_k, a_k, a_n, prediction, clip), t_n, a_n
            z2 = _ddim_step(teacher, z2, t_k, a_k, a_2, prediction, clip)
            s2, s = (1 - a_2).sqrt(), (1 - a_t).sqrt()
            x_target = (z2 - (s2 / s) * z) / (a_2.sqrt() - (s2 / s) * a_t.sqrt())
            c = a_2.sqrt() - (s2 / s) * a_t.sqrt()  # one step t → t'' lands at (σ_t''/σ_t) z + c x̂
        eps_hat, x_hat = _eps_x0(net(z, t), z, a_t, prediction)
        if weighting == "epsilon":
            return torch.nn.functional.mse_loss(eps_hat, (z - a_t.sqrt() * x_target) / s)
        if weighting == "landing":
            return ((c * (x_hat - x_target)) ** 2).mean()
        w = torch.clamp(a_t / (1 - a_t), min=1.0)  # max(SNR, 1)
        return (w * (x_hat - x_target) ** 2).mean()

    return loss_fn


def _fid(cfg, ema: dict, steps: int, n: int, seed: int, device) -> dict:
    """FID (and its real-vs-real reference) of n DDIM samples of the EMA student at its step count."""
    model = build_model(training_model_config(cfg)).to(device)
    model.load_state_dict(ema)
    m = cfg.model
    images = sample(model, n, (m.in_channels, m.image_size, m.image_size), cfg.diffusion, sampler="ddim",
                    steps=steps, spacing="trailing", seed=seed, device=device)
    r = evaluate_images(images, cfg.data)
    return {k: r[k] for k in ("fid", "fid_real_reference", "fid_ratio") if k in r}


def _save(out: Path, cfg, teacher_art: Artifact, ema: dict, record: dict, *, state: dict | None,
          teacher_state: dict | None, samples=None) -> Artifact:
    """Write (atomically replace) the student checkpoint; with `state`, the resume state of the running round."""
    return save_checkpoint(out, cfg, ema, step=teacher_art.manifest.get("train_step", 0), train_state=state,
                           samples=samples, replace=out.exists(), kind=STAGE_IO["distill"].produces(),
                           stage="distill", parent=teacher_art, extra={SECTION: record},
                           complete=record["in_progress"] is None,
                           state_files={TEACHER: teacher_state} if state is not None else None)


def _settings(cfg: DistillConfig, teacher_art: Artifact) -> dict:
    s = {"teacher_id": teacher_art.manifest.get("id"), **to_dict(cfg)}
    if s.get("factor") == 2:  # the paper's halving: recorded as before `factor` existed, so those runs resume
        del s["factor"]
    return s


def _resume(out: Path, cfg: DistillConfig, teacher_art: Artifact) -> tuple[Artifact, dict] | None:
    """The artifact at `out` and its record if it is this run's own (finished or not); None if `out` is new."""
    if not out.exists():
        return None
    art = Artifact.load(out, kinds=[STAGE_IO["distill"].produces()])
    record = art.manifest.get(SECTION)
    if not isinstance(record, dict) or "settings" not in record:
        raise ArtifactError(f"{out} exists and is not a distillation output; choose a new --out")
    mine = _settings(cfg, teacher_art)
    if record["settings"] != mine:
        diff = sorted(k for k in set(mine) | set(record["settings"]) if record["settings"].get(k) != mine.get(k))
        raise ArtifactError(f"{out} holds a distillation run with different settings ({', '.join(diff)} differ); "
                            "resume with the same settings or choose a new --out")
    return art, record


def distill(src, cfg: DistillConfig, out: str | Path, *, progress: bool = True, threads: int | None = None,
            device: str | None = None) -> Artifact:
    """Stage: a checkpoint → a checkpoint distilled for `cfg.to_steps` DDIM steps (trailing spacing); resumable."""
    import torch

    out = check_output_path(out, exist_ok=True)
    teacher = load_checkpoint(src, kinds=STAGE_IO["distill"].accepts)
    tcfg = teacher.config
    rounds = round_steps(cfg.from_steps, cfg.to_steps, cfg.factor)
    if cfg.from_steps > tcfg.diffusion.timesteps:
        raise ConfigError(f"from_steps {cfg.from_steps} exceeds diffusion.timesteps {tcfg.diffusion.timesteps}")
    grids = [_round_grid(tcfg.diffusion, n, cfg.factor) for n in rounds]  # every refusal before any work
    resumed = _resume(out, cfg, teacher.artifact)
    if resumed is not None and resumed[1]["in_progress"] is None:
        return resumed[0]
    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    student_cfg = dataclasses.replace(tcfg, sample_steps=cfg.to_steps)
    train_model_cfg = training_model_config(tcfg)
    record = {"settings": _settings(cfg, teacher.artifact), "teacher": str(teacher.artifact.path),
              "spacing": "trailing", "sampler": "ddim", "steps": cfg.from_steps, "rounds": [],
              "in_progress": None}
    teacher_state = {k: v.to(device) for k, v in teacher.model.state_dict().items()}
    start_round, start_step, resume_state = 0, 0, None
    if resumed is not None:
        art, record = resumed
        start_round = len(record["rounds"])
        resume_state = load_train_state(art)
        start_step = resume_state["step"]
        from safetensors.torch import load_file

        teacher_state = {k: v.to(device) for k, v in load_file(str(art.file(STATE_DIR) / TEACHER)).items()}
    images = load_images(tcfg.data, "train")[0].to(device)
    clip = tcfg.diffusion.clip_range or None
    art = None
    for r in range(start_round, len(rounds)):
        n, t0 = rounds[r], time.perf_counter()
        teacher_net = build_model(train_model_cfg).to(device)
        teacher_net.load_state_dict(teacher_state)
        teacher_net.eval().requires_grad_(False)
        model = build_model(train_model_cfg).to(device)
        model.load_state_dict(teacher_state)  # the student starts as its teacher
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        ema = {k: v.detach().clone() for k, v in teacher_state.items()}
        step0 = 0
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            opt.load_state_dict(resume_state["optimizer"])
            ema = {k: v.to(device) for k, v in resume_state["ema"].items()}
            step0, resume_state = start_step, None
        fit_cfg = dataclasses.replace(tcfg, steps=cfg.train_steps, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
                                      batch_size=cfg.batch_size, warmup_steps=min(cfg.warmup_steps, cfg.train_steps),
                                      ema_decay=cfg.ema_decay, seed=cfg.seed + r, weight_decay=0.0)
        losses: list[float] = []
        loss_fn = _loss_fn(teacher_net, grids[r], tcfg.diffusion.prediction, clip, cfg.weighting)

        def recording(net, x, abar, generator=None, _f=loss_fn):
            loss = _f(net, x, abar, generator=generator)
            losses.append(loss.item())
            return loss

        def save_periodically(step: int, _r=r, _n=n):
            if step % cfg.save_every == 0 and step < cfg.train_steps:
                rec = dict(record, in_progress={"round": _r + 1, "steps": _n, "train_step": step})
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
                _save(out, student_cfg, teacher.artifact, ema, rec, state=state, teacher_state=teacher_state)

        label = f"distill {cfg.factor * n}→{n}"
        fit(fit_cfg, model, opt, ema, images, start=step0, loss_fn=recording, progress=progress, label=label,
            after_step=save_periodically)
        entry = {"round": r + 1, "steps": n, "teacher_steps": cfg.factor * n, "train_steps": cfg.train_steps,
                 "loss_first": losses[0] if losses and step0 == 0 else None,
                 "loss_last": losses[-1] if losses else None,
                 "loss_last_mean": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
                 "resumed_at": step0 or None, "seconds": time.perf_counter() - t0}
        if cfg.fid_n > 0:
            entry["fid"] = _fid(tcfg, ema, n, cfg.fid_n, cfg.seed, device)
        record = dict(record, rounds=[*record["rounds"], entry], steps=n)
        teacher_state = {k: v.detach().clone() for k, v in ema.items()}
        last = r + 1 == len(rounds)
        samples = None
        if last:
            m = tcfg.model
            final = build_model(train_model_cfg).to(device)
            final.load_state_dict(ema)
            samples = sample(final, tcfg.sample_n, (m.in_channels, m.image_size, m.image_size), tcfg.diffusion,
                             sampler="ddim", steps=n, spacing="trailing", seed=cfg.seed, device=device)
            record["in_progress"] = None
            art = _save(out, student_cfg, teacher.artifact, ema, record, state=None, teacher_state=None,
                        samples=samples)
        else:
            # The next round starts from here: its teacher is this round's EMA student, at train step 0.
            rec = dict(record, in_progress={"round": r + 2, "steps": rounds[r + 1], "train_step": 0})
            state = {"model": ema, "optimizer": torch.optim.AdamW(model.parameters(), lr=cfg.lr).state_dict(),
                     "step": 0}
            _save(out, student_cfg, teacher.artifact, ema, rec, state=state, teacher_state=teacher_state)
            record = rec
    return art
