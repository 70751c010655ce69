"""Training loop: loss, overfitting a batch, resume, divergence stop, atomic checkpoints, TensorBoard,
validation hook and the `deqflow train` command on the fake chairs layout. Tiny models, CPU, seconds."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_layouts import write_fake_chairs
from fakes import save_model

from deqflow.cli import main
from deqflow.errors import CheckpointError, InputError
from training.checkpoint import load_model
from training.config import ModelConfig
from training.data import SyntheticFlowDataset
from training.deq.config import DEQConfig
from training.loss import fixed_point_correction_loss
from training.model.deq_flow import DEQFlow
from training.train import TrainConfig, Trainer, TrainingDiverged

ENC = (16, 24, 32)



def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    deq = DEQConfig(f_solver="fixed_point", f_max_iter=4, n_states=2)
    base = dict(stage="synthetic", output=str(tmp_path / name), num_steps=4, batch_size=2, lr=4e-4,
                image_size=(128, 128), ckpt_every=2, val_every=1000, log_every=1,
                model=ModelConfig(variant="T", encoder_dims=ENC, deq=deq))
    base.update(kw)
    return TrainConfig(**base)


def _fixed_batch(n=2, size=(128, 160), seed=5):
    ds = SyntheticFlowDataset(size=size, length=n, seed=seed, max_displacement=8)
    return [torch.stack(items) for items in zip(*[ds[i][:4] for i in range(n)])]


# --------------------------------------------------------------------------------------------- loss


def test_fixed_point_correction_loss_hand_computed():
    # 1x4 image, 4 pixels: (u, v) per pixel
    gt = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 400.0], [-2.0, 0.0]]).T.reshape(1, 2, 1, 4)
    valid = torch.tensor([1.0, 0.4, 1.0, 0.5]).reshape(1, 1, 4)  # pixel 1 invalid; pixel 2 has |gt| = 400
    p0 = torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 4)
    p1 = torch.tensor([[1.0, 1.0], [0.0, 0.0], [5.0, 5.0], [-2.0, 3.0]]).T.reshape(1, 2, 1, 4)
    # counted pixels 0 and 3; L1 over both channels, mean over all N*2*H*W = 8 entries:
    # p0: (|0-1| + |0-2| + |0+2| + 0) / 8 = 5/8;  p1: (0 + |1-2| + 0 + |3-0|) / 8 = 4/8
    loss, metrics = fixed_point_correction_loss([p0, p1], gt, valid, gamma=0.8)
    assert loss.item() == pytest.approx(0.8 * 5 / 8 + 4 / 8, abs=1e-7)  # = 1.0
    # three states: weights 0.8^2, 0.8, 1
    loss3, _ = fixed_point_correction_loss([p0, p0, p1], gt, valid, gamma=0.8)
    assert loss3.item() == pytest.approx(0.64 * 5 / 8 + 0.8 * 5 / 8 + 4 / 8, abs=1e-7)
    # metrics of the last prediction over the 2 counted pixels: EPE 1 and 3
    assert metrics["epe"] == pytest.approx(2.0)
    assert (metrics["1px"], metrics["3px"], metrics["5px"]) == (0.0, 0.5, 1.0)
    # the ignored pixels get no gradient
    p1g = p1.clone().requires_grad_(True)
    fixed_point_correction_loss([p0, p1g], gt, valid, gamma=0.8)[0].backward()
    g = p1g.grad[0, :, 0]
    assert g[:, 1].abs().sum() == 0 and g[:, 2].abs().sum() == 0
    assert torch.allclose(g[:, 0], torch.tensor([0.0, -1 / 8])) and torch.allclose(g[:, 3], torch.tensor([0.0, 1 / 8]))


# --------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_cfg(tmp_path, num_steps=200))
    trainer.train_mode()
    batch = _fixed_batch()
    losses = [trainer.train_step(batch)["loss"] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    assert trainer.step == 20


def test_training_with_local_correlation_takes_the_same_steps_as_all_pairs(tmp_path):
    """--corr local: the same loss and, after one optimizer step, the same weights (within float rounding)."""
    batch = _fixed_batch(size=(128, 128))
    runs = {}
    for corr in ("all-pairs", "local"):
        torch.manual_seed(0)
        trainer = Trainer(_cfg(tmp_path, name=corr, corr=corr))
        assert trainer.model.lookup == ("local" if corr == "local" else "grid_sample")
        trainer.train_mode()
        loss = trainer.train_step(batch)["loss"]
        runs[corr] = loss, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    assert runs["local"][0] == pytest.approx(runs["all-pairs"][0], rel=1e-4)
    assert torch.allclose(runs["local"][1], runs["all-pairs"][1], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- resume


class _Interrupt(Exception):
    pass


def _interrupt_after(trainer, n_steps):
    original = trainer.train_step

    def step(batch):
        if trainer.step >= n_steps:
            raise _Interrupt
        return original(batch)

    trainer.train_step = step


def test_resume_continues_step_optimizer_scheduler_and_weights(tmp_path):
    cfg = _cfg(tmp_path, num_steps=4, ckpt_every=2)
    first = Trainer(cfg)
    _interrupt_after(first, 2)  # a run killed after step 2 (its checkpoint was written at step 2)
    with pytest.raises(_Interrupt):
        first.fit()
    last = Path(cfg.output) / "last.pth"
    saved = torch.load(last, weights_only=True)
    assert saved["step"] == 2

    resumed = Trainer(_cfg(tmp_path, num_steps=4, ckpt_every=2, resume=str(last)))
    assert resumed.step == 2
    for name, value in first.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    opt_a, opt_b = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert len(opt_b["state"]) == len(opt_a["state"]) == len(list(first.model.parameters()))
    for idx, st in opt_a["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_b["state"][idx][key], st[key]), (idx, key)
    assert float(opt_b["state"][0]["step"]) == 2.0
    assert resumed.scheduler.get_last_lr() == first.scheduler.get_last_lr()
    assert resumed.scheduler.last_epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == first.optimizer.param_groups[0]["lr"]

    resumed.fit()
    assert resumed.step == 4
    final = torch.load(Path(cfg.output) / "last.pth", weights_only=True)
    assert final["step"] == 4 and final["scheduler"]["last_epoch"] == 4
    steps = [json.loads(line)["step"] for line in (Path(cfg.output) / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert (Path(cfg.output) / "final.pth").is_file()
    # resuming a finished run does no step and keeps the counter
    again = Trainer(_cfg(tmp_path, num_steps=4, resume="auto"))
    assert again.step == 4


def test_resume_rejects_weights_only_corrupt_and_mismatched_checkpoints(tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    save_model(weights, DEQFlow(cfg.model))
    with pytest.raises(CheckpointError, match="--init"):
        Trainer(_cfg(tmp_path, resume=str(weights)))
    # --init accepts the same file
    init = Trainer(_cfg(tmp_path, name="init", init=str(weights)))
    assert init.step == 0

    good = Trainer(cfg)
    path = good.save("last.pth")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for bad, pattern in ((truncated, "corrupt or truncated"), (garbage, "not a PyTorch checkpoint"),
                         (empty, "empty"), (tmp_path / "missing.pth", "no such checkpoint")):
        with pytest.raises(CheckpointError, match=pattern):
            Trainer(_cfg(tmp_path, resume=str(bad)))
    # a longer run cannot reuse the one-cycle schedule of a shorter one
    with pytest.raises(CheckpointError, match="--num-steps 4"):
        Trainer(_cfg(tmp_path, num_steps=400, resume=str(path)))


def test_cli_resume_errors_are_one_line(tmp_path, capsys):
    truncated = tmp_path / "bad.pth"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    rc = main(["train", "--tiny", "--encoder-dims", *map(str, ENC), "--num-steps", "2", "--output",
               str(tmp_path / "r"), "--resume", str(truncated)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("deqflow train: error: cannot read checkpoint") and "Traceback" not in err


# --------------------------------------------------------------------------------------------- divergence


def test_nan_ground_truth_stops_with_training_diverged(tmp_path):
    trainer = Trainer(_cfg(tmp_path))
    trainer.train_mode()
    image1, image2, flow, valid = _fixed_batch()
    flow[0, 0, 10, 10] = float("nan")
    with pytest.raises(TrainingDiverged) as info:
        trainer.train_step((image1, image2, flow, valid))
    msg = str(info.value)
    assert "step 1" in msg and "no checkpoint" in msg and "ground-truth flow" in msg
    assert trainer.step == 0


def test_nan_model_output_names_step_and_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, num_steps=6, ckpt_every=2)
    trainer = Trainer(cfg)
    model = trainer.model

    def forward(image1, image2):
        out = model(image1, image2)
        if trainer.step >= 3:  # the 4th step diverges
            out.flow_predictions = [p * float("nan") for p in out.flow_predictions]
        return out

    trainer.ddp = forward
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit()
    msg = str(info.value)
    last = Path(cfg.output) / "last.pth"
    assert "loss became nan at step 4" in msg
    assert f"last good checkpoint is {last} (step 2)" in msg and "--lr" in msg
    assert torch.load(last, weights_only=True)["step"] == 2  # untouched by the failed step


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(tmp_path))
    out = Path(trainer.cfg.output)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")  # a partial write, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        trainer.save("last.pth")
    assert sorted(p.name for p in out.iterdir()) == []

    monkeypatch.setattr(torch, "save", real_save)
    good = trainer.save("last.pth")
    before = good.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        trainer.save("last.pth")
    assert sorted(p.name for p in out.iterdir()) == ["last.pth"]  # no temp file left
    assert good.read_bytes() == before  # the previous checkpoint survives intact
    monkeypatch.setattr(torch, "save", real_save)
    model, meta = load_model(good)
    assert model.cfg.encoder_dims == ENC and meta["step"] == 0


# --------------------------------------------------------------------------------------------- logging


def test_tensorboard_writes_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tmp_path, num_steps=2, tensorboard=True)
    Trainer(cfg).fit()
    tb = Path(cfg.output) / "tensorboard"
    events = list(tb.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tb))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2] and all(e.value > 0 for e in loss)


def test_train_command_on_fake_chairs_with_validation(tmp_path, capsys):
    from training.evaluate import validate

    root = tmp_path / "data"
    write_fake_chairs(root, n=4, size=(128, 160))  # 3 training pairs, 1 validation pair (chairs_split.txt)
    out = tmp_path / "chairs"
    rc = main(["train", "--stage", "chairs", "--data-root", str(root), "--tiny", "--encoder-dims", *map(str, ENC),
               "--num-steps", "2", "--batch-size", "2", "--image-size", "128", "128", "--f_thres", "4",
               "--n_losses", "2", "--val-every", "2", "--val-samples", "1", "--output", str(out)])
    assert rc == 0
    assert "step 2 validation: chairs_epe" in capsys.readouterr().out
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["step"] == 2 and last["meta"]["stage"] == "chairs"
    assert last["model_config"]["deq"]["f_max_iter"] == 4 and last["model_config"]["deq"]["n_states"] == 2
    logged = [json.loads(line) for line in (out / "val_log.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and logged[0]["step"] == 2
    epe = logged[0]["chairs_epe"]
    assert 0 < epe < 100
    # the hook evaluated exactly the weights saved at that step
    model, _ = load_model(out / "final.pth")
    with model.solver_override(f_solver="fixed_point"):  # validation runs the official evaluation solver
        assert validate(model, ("chairs",), root=root, max_samples=1)["chairs_epe"] == pytest.approx(epe, rel=1e-5)


# --------------------------------------------------------------------------------------------- drift, snapshots


def test_drift_penalty_only_on_states_worse_than_the_one_before():
    gt = torch.zeros(1, 2, 1, 2)
    valid = torch.ones(1, 1, 2)
    good, bad = torch.full((1, 2, 1, 2), 1.0), torch.full((1, 2, 1, 2), 3.0)
    plain, metrics = fixed_point_correction_loss([good, bad], gt, valid, gamma=0.8)
    penalised, _ = fixed_point_correction_loss([good, bad], gt, valid, gamma=0.8, drift_weight=0.5)
    assert penalised.item() == pytest.approx(plain.item() + 0.5 * (3.0 - 1.0))
    assert metrics["drift"] == pytest.approx(2.0)
    improving, _ = fixed_point_correction_loss([bad, good], gt, valid, gamma=0.8, drift_weight=0.5)
    assert improving.item() == pytest.approx(fixed_point_correction_loss([bad, good], gt, valid, gamma=0.8)[0].item())
    # the earlier state is held constant: the penalty pushes only the later one
    first, last = good.clone().requires_grad_(True), bad.clone().requires_grad_(True)
    fixed_point_correction_loss([first, last], gt, valid, gamma=1.0, drift_weight=1.0)[0].backward()
    assert torch.allclose(first.grad, torch.full_like(first, 1 / 4))
    assert torch.allclose(last.grad, torch.full_like(last, 2 / 4))


def test_realistic_data_drift_weight_and_snapshots(tmp_path):
    cfg = _cfg(tmp_path, num_steps=2, ckpt_every=1, snapshot_every=2, synthetic_preset="realistic",
               drift_weight=0.5)
    Trainer(cfg).fit()
    out = Path(cfg.output)
    snap = torch.load(out / "snapshots" / "step_000002.pth", weights_only=True)
    assert "optimizer" not in snap and snap["meta"]["step"] == 2
    assert snap["meta"]["train_config"]["synthetic_preset"] == "realistic"
    assert not (out / "snapshots" / "step_000001.pth").exists()
    logged = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert "drift" in logged and logged["cpu_hours"] > 0
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["cpu_seconds"] > 0 and snap["meta"]["cpu_hours"] > 0
    resumed = Trainer(replace(cfg, num_steps=2, resume="auto"))  # CPU time carries over a resume
    assert resumed.cpu_hours() >= last["cpu_seconds"] / 3600.0
    with pytest.raises(InputError, match="drift_weight"):
        Trainer(replace(cfg, drift_weight=-1.0))


def test_validation_can_score_the_heldout_real_set(tmp_path, monkeypatch):
    from training import heldout_eval
    from training.data.heldout_real import HeldoutRealConfig, heldout_homography_pairs

    small = {"homography": heldout_homography_pairs(HeldoutRealConfig(size=(128, 128), motion_levels=(4.0,)))[:1]}
    monkeypatch.setattr(heldout_eval, "heldout_sets", lambda: small)
    cfg = _cfg(tmp_path, num_steps=1, val_every=1, val_samples=1, val_real=True)
    Trainer(cfg).fit()
    logged = json.loads((Path(cfg.output) / "val_log.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 1 and 0 < logged["real_homography_epe_k60"] < 100
    assert "real_homography_epe_k16" in logged and "synthetic_epe" in logged


def _float_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_weight_average_follows_the_ema_recursion_and_survives_resume(tmp_path):
    decay = 0.75
    cfg = _cfg(tmp_path, num_steps=3, ckpt_every=1, snapshot_every=2, ema_decay=decay)
    trainer = Trainer(cfg)
    raw = [_float_state(trainer.model)]  # the weights (and BatchNorm statistics) before each step and after
    original = trainer.train_step

    def step(batch):
        out = original(batch)
        raw.append(_float_state(trainer.model))
        return out

    trainer.train_step = step
    trainer.fit()
    expected = dict(raw[0])
    for state in raw[1:]:  # e_t = decay * e_{t-1} + (1 - decay) * w_t, e_0 = w_0
        expected = {k: decay * expected[k] + (1 - decay) * state[k] for k in expected}
    out = Path(cfg.output)
    final_ema = torch.load(out / "final_ema.pth", weights_only=True)
    final_raw = torch.load(out / "final.pth", weights_only=True)
    assert final_ema["meta"]["weights"] == "ema" and final_raw["meta"]["weights"] == "raw"
    assert "optimizer" in final_raw and "optimizer" not in final_ema  # final.pth keeps the training state
    moved = 0
    for k, value in expected.items():
        torch.testing.assert_close(final_ema["state_dict"][k], value, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(final_raw["state_dict"][k], raw[-1][k], rtol=0, atol=0, msg=k)
        moved += not torch.allclose(value, raw[-1][k])
    assert moved > 0  # the average really differs from the last weights
    assert (out / "snapshots_ema" / "step_000002.pth").is_file() and (out / "snapshots" / "step_000002.pth").is_file()
    load_model(out / "final_ema.pth")  # a normal weights file for every command

    # the average travels in last.pth and comes back on resume
    resumed = Trainer(replace(cfg, num_steps=3, resume="auto"))
    for k, value in _float_state(trainer.ema).items():
        assert torch.equal(_float_state(resumed.ema)[k], value), k
    # a run without an average resumes it from the weights of a checkpoint that holds none
    plain = _cfg(tmp_path, name="plain", num_steps=2, ckpt_every=1)
    Trainer(plain).fit()
    later = Trainer(replace(plain, num_steps=2, resume="auto", ema_decay=decay))
    for k, value in _float_state(later.model).items():
        assert torch.equal(_float_state(later.ema.module)[k], value), k
    with pytest.raises(InputError, match="ema_decay"):
        Trainer(replace(cfg, ema_decay=1.0))


def test_train_cli_rejects_an_ema_decay_outside_0_1(tmp_path, capsys):
    assert main(["train", "--ema-decay", "1.5", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--ema-decay: must be in [0, 1), got 1.5" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
