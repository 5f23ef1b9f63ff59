"""Progressive distillation on the tiny checkpoint: the loss falls, the student samples at its step count, a killed
run resumes to the same weights, bad sizes are refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from cunet_edge import distillation
from cunet_edge.artifact import Artifact
from cunet_edge.checkpoint import load_checkpoint
from cunet_edge.data import load_images
from cunet_edge.diffusion import sample, to_model_range
from cunet_edge.distillation import DistillConfig, distill, round_steps
from cunet_edge.errors import ArtifactError, ConfigError

FAST = {"train_steps": 6, "batch_size": 8, "warmup_steps": 0, "lr": 1e-3, "save_every": 3}


def _fixed_loss(ckpt, teacher, student_steps: int) -> float:
    """The distillation loss of `ckpt`'s network on one fixed batch, toward `teacher`'s two DDIM steps."""
    cfg = teacher.config
    grid = distillation._round_grid(cfg.diffusion, student_steps)
    loss_fn = distillation._loss_fn(teacher.model, grid, cfg.diffusion.prediction, cfg.diffusion.clip_range)
    x = to_model_range(load_images(cfg.data, "train")[0][:256], cfg.diffusion.data_range)
    with torch.no_grad():
        return loss_fn(ckpt.model, x, None, generator=torch.Generator().manual_seed(123)).item()


def test_distilled_student_beats_its_start_and_samples_at_its_steps(tiny_checkpoint, tmp_path):
    cfg = DistillConfig(from_steps=4, to_steps=2, **(FAST | {"train_steps": 30, "batch_size": 16}))
    art = distill(tiny_checkpoint, cfg, tmp_path / "s", progress=False)
    teacher, student = load_checkpoint(tiny_checkpoint), load_checkpoint(art.path)
    # The student starts as its teacher: the round must bring its loss down.
    before, after = _fixed_loss(teacher, teacher, 2), _fixed_loss(student, teacher, 2)
    assert after < 0.8 * before, (before, after)
    d = art.manifest["distillation"]
    assert art.kind == "checkpoint" and art.manifest["parent"]["id"] == teacher.artifact.manifest["id"]
    assert d["steps"] == 2 and d["in_progress"] is None and [r["steps"] for r in d["rounds"]] == [2]
    assert student.config.model == teacher.config.model and student.config.sample_steps == 2
    m = student.config.model
    x = sample(student.model, 3, (m.in_channels, m.image_size, m.image_size), student.config.diffusion,
               sampler="ddim", steps=2, spacing="trailing")
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
    assert (art.path / "samples.png").is_file() and not (art.path / "train_state").exists()


class _Killed(BaseException):
    pass


def test_a_killed_run_resumes_to_the_same_student(tiny_checkpoint, tmp_path, monkeypatch):
    cfg = DistillConfig(from_steps=8, to_steps=2, **FAST)
    whole = distill(tiny_checkpoint, cfg, tmp_path / "whole", progress=False)

    real_save, saves = distillation._save, []

    def save_then_die(*args, **kwargs):  # the process dies right after its third save (mid round 2)
        art = real_save(*args, **kwargs)
        saves.append(art.manifest["distillation"]["in_progress"])
        if len(saves) == 3:
            raise _Killed
        return art

    monkeypatch.setattr(distillation, "_save", save_then_die)
    with pytest.raises(_Killed):
        distill(tiny_checkpoint, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(distillation, "_save", real_save)
    cut = Artifact.load(tmp_path / "cut")  # a valid checkpoint that says where it stands
    assert saves[-1] == {"round": 2, "steps": 2, "train_step": 3}
    assert cut.manifest["distillation"]["in_progress"] == saves[-1] and not cut.manifest["complete"]
    resumed = distill(tiny_checkpoint, cfg, tmp_path / "cut", progress=False)
    d = resumed.manifest["distillation"]
    assert d["in_progress"] is None and [r["resumed_at"] for r in d["rounds"]] == [None, 3]
    a, b = load_checkpoint(whole.path).model.state_dict(), load_checkpoint(resumed.path).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Finished: a rerun returns it untouched; other settings are refused.
    manifest = (resumed.path / "manifest.json").read_text()
    assert distill(tiny_checkpoint, cfg, tmp_path / "cut", progress=False).manifest["id"] == resumed.manifest["id"]
    assert (resumed.path / "manifest.json").read_text() == manifest
    with pytest.raises(ArtifactError, match="lr differ"):
        distill(tiny_checkpoint, DistillConfig(from_steps=8, to_steps=2, **(FAST | {"lr": 2e-3})),
                tmp_path / "cut", progress=False)


def test_sizes_are_checked_before_any_work(tiny_checkpoint, tmp_path):
    assert round_steps(64, 4) == [32, 16, 8, 4]
    for kw, msg in [({"from_steps": 8, "to_steps": 3}, "does not halve"), ({"from_steps": 4, "to_steps": 4}, "below"),
                    ({"from_steps": 6, "to_steps": 2}, "does not halve"), ({"train_steps": 0}, "train_steps"),
                    ({"fid_n": -1}, "fid_n"), ({"ema_decay": 1.0}, "ema_decay")]:
        with pytest.raises(ConfigError, match=msg):
            DistillConfig(**kw)
    with pytest.raises(ConfigError, match="exceeds diffusion.timesteps"):
        distill(tiny_checkpoint, DistillConfig(from_steps=2048, to_steps=4), tmp_path / "a", progress=False)
    with pytest.raises(ArtifactError, match="not a distillation output"):
        distill(tiny_checkpoint, DistillConfig(), tiny_checkpoint, progress=False)
    assert not (tmp_path / "a").exists()
    assert json.loads((tiny_checkpoint / "manifest.json").read_text())["stage"] == "train"


@pytest.mark.parametrize("factor", [2, 4])
def test_landing_weighting_is_the_distance_between_the_landing_points(tiny_checkpoint, factor):
    """weighting="landing": the mean squared distance between where ONE student DDIM step lands and where FACTOR
    teacher steps land (two in the paper's rounds), computed here from the sampler's own step (no clipping)."""
    teacher = load_checkpoint(tiny_checkpoint)
    cfg = teacher.config
    pred = cfg.diffusion.prediction
    student = load_checkpoint(tiny_checkpoint).model
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    grid = distillation._round_grid(cfg.diffusion, 2, factor)
    x = to_model_range(load_images(cfg.data, "train")[0][:16], cfg.diffusion.data_range)
    loss_fn = distillation._loss_fn(teacher.model, grid, pred, None, "landing")
    with torch.no_grad():
        got = loss_fn(student, x, None, generator=torch.Generator().manual_seed(5)).item()
        g = torch.Generator().manual_seed(5)  # the draws the loss makes, in its order
        i = torch.randint(0, len(grid), (x.shape[0],), generator=g)
        noise = torch.randn(x.shape, generator=g)
        rows = torch.tensor(grid, dtype=torch.float64)[i]
        col = lambda k: rows[:, k].float().view(-1, 1, 1, 1)  # noqa: E731
        # the teacher's path t → t_1 → ... → t'': timesteps in columns 0, 2, ..., levels in 1, 3, ..., the last column
        ts = [rows[:, k].long() for k in range(0, 2 * factor, 2)]
        levels = [col(k) for k in range(1, 2 * factor, 2)] + [col(2 * factor)]
        z = levels[0].sqrt() * x + (1 - levels[0]).sqrt() * noise
        step = distillation._ddim_step
        many = z
        for k in range(factor):
            many = step(teacher.model, many, ts[k], levels[k], levels[k + 1], pred, None)
        one = step(student, z, ts[0], levels[0], levels[-1], pred, None)
    want = ((one - many) ** 2).mean().item()
    assert got == pytest.approx(want, rel=1e-3) and want > 0


def test_factor_divides_the_steps_per_round_with_that_many_teacher_steps(tiny_checkpoint, tmp_path):
    assert round_steps(32, 4, 8) == [4] and round_steps(64, 4, 4) == [16, 4] and round_steps(8, 2) == [4, 2]
    for kw, msg in [({"from_steps": 16, "to_steps": 2, "factor": 4}, "does not divide by 4"),
                    ({"factor": 1}, "factor"), ({"factor": 128, "from_steps": 512}, "factor")]:
        with pytest.raises(ConfigError, match=msg):
            DistillConfig(**kw)
    grid = distillation._round_grid(load_checkpoint(tiny_checkpoint).config.diffusion, 2, 4)
    assert len(grid) == 2 and all(len(r) == 2 + 2 * 3 + 1 for r in grid)
    ts = [r[0] for r in grid] + [r[k] for r in grid for k in (2, 4, 6)]
    assert len(set(ts)) == 8  # the student's 2 timesteps and the teacher's 6 inner ones: the 8-step grid
    art = distill(tiny_checkpoint, DistillConfig(from_steps=8, to_steps=2, factor=4, **FAST), tmp_path / "f4",
                  progress=False)
    d = art.manifest["distillation"]
    assert [(r["steps"], r["teacher_steps"]) for r in d["rounds"]] == [(2, 8)] and d["settings"]["factor"] == 4
    # the paper's halving records its settings as before the option existed, so those runs still resume
    assert "factor" not in distillation._settings(DistillConfig(), Artifact.load(tiny_checkpoint))


def test_cosine_schedule_reaches_the_optimizer_and_landing_trains(tiny_checkpoint, tmp_path, monkeypatch):
    lrs, real_fit = [], distillation.fit

    def spy(cfg, model, opt, ema, images, **kw):  # the lr the optimizer held at each step
        after = kw["after_step"]
        kw["after_step"] = lambda k: (lrs.append(opt.param_groups[0]["lr"]), after(k))
        return real_fit(cfg, model, opt, ema, images, **kw)

    monkeypatch.setattr(distillation, "fit", spy)
    cfg = DistillConfig(from_steps=4, to_steps=2, lr_schedule="cosine", weighting="landing",
                        **(FAST | {"train_steps": 30, "batch_size": 16, "warmup_steps": 5}))
    art = distill(tiny_checkpoint, cfg, tmp_path / "s", progress=False)
    assert lrs[4] == pytest.approx(1e-3) and lrs[-1] < 0.15e-3 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    settings = art.manifest["distillation"]["settings"]
    assert (settings["lr_schedule"], settings["weighting"]) == ("cosine", "landing")
    teacher, student = load_checkpoint(tiny_checkpoint), load_checkpoint(art.path)
    assert _fixed_loss(student, teacher, 2) < 0.8 * _fixed_loss(teacher, teacher, 2)
    for kw, msg in [({"lr_schedule": "step"}, "lr_schedule"), ({"weighting": "snr"}, "weighting")]:
        with pytest.raises(ConfigError, match=msg):
            DistillConfig(**kw)
