"""Training loop: AdamW + OneCycle, fixed-point-correction loss, resume, atomic checkpoints, NaN stop,
tqdm progress, optional TensorBoard, periodic validation, DistributedDataParallel via torchrun
(NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from deqflow.checkpoint import make_payload, read_checkpoint_file, split_checkpoint, write_checkpoint
from deqflow.errors import CheckpointError, DeqflowError, InputError
from deqflow.extras import require
from deqflow.fileio import atomic_write_bytes, remove_stale_temps
from training.checkpoint import load_state_dict_strict
from training.config import ModelConfig
from training.loss import fixed_point_correction_loss
from training.model.deq_flow import DEQFlow
from training.stages import STAGES

ETA_AFTER_STEPS = 5
"""The ETA is printed after this many steps of a run (the first step includes one-time start-up costs)."""


class TrainingDiverged(DeqflowError):
    """The loss or the gradients became NaN/Inf."""


@dataclass
class TrainConfig:
    stage: str = "synthetic"
    output: str = "runs/deqflow"
    data_root: str = "datasets"
    num_steps: int | None = None  # None: the stage default
    batch_size: int | None = None
    lr: float | None = None
    wdecay: float | None = None
    gamma: float | None = None
    image_size: tuple[int, int] | None = None
    epsilon: float = 1e-8
    clip: float = 1.0
    seed: int = 1234
    num_workers: int = 0
    ckpt_every: int = 200
    snapshot_every: int = 0  # > 0: also keep the weights every this many steps (snapshots/step_NNNNNN.pth)
    val_every: int = 1000
    val_samples: int = 16
    val_real: bool = False  # validation also scores the held-out real-photograph set (training/heldout_eval.py)
    log_every: int = 10
    resume: str | None = None  # a checkpoint path, or "auto" = <output>/last.pth when it exists
    init: str | None = None  # start from these weights (new optimizer), e.g. the chairs result for things
    synthetic_preset: str = "classic"  # scene options of the synthetic stage (scene_config.SYNTHETIC_PRESETS)
    drift_weight: float = 0.0  # penalty on a sampled state worse than the one before it (loss.py)
    # > 0: also keep an exponential moving average of the weights (and BatchNorm statistics) with this decay per
    # step. Snapshots and the final weights are written twice: raw (snapshots/, final.pth) and averaged
    # (snapshots_ema/, final_ema.pth), so one run shows whether the average is better than its raw snapshots.
    ema_decay: float = 0.0
    tensorboard: bool = False
    device: str = "cpu"
    # Activation checkpointing of the encoders (DEQFlow.memory_saving): same outputs and gradients, less
    # peak memory for more CPU time per step (measured in docs/bench_train_memory_saving.md). Off by
    # default: CPU runs are bound by time, not memory; turn it on where memory limits the batch or crop.
    memory_saving: bool = False
    # Correlation while training: "all-pairs" (the volume, memory grows with the square of the crop's pixel
    # count) or "local" (computed on demand, the same numbers and gradients; for crops whose volume does not fit).
    corr: str = "all-pairs"
    model: ModelConfig = field(default_factory=ModelConfig)

    def resolved(self) -> TrainConfig:
        """Fill stage defaults for every option left at None."""
        if self.stage not in STAGES:
            raise InputError(f"unknown stage {self.stage!r}; choose one of {sorted(STAGES)}")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"ema_decay must be in [0, 1) (0: no average), got {self.ema_decay}")
        if self.drift_weight < 0 or self.snapshot_every < 0:
            raise InputError(f"drift_weight and snapshot_every must be >= 0, got {self.drift_weight} and "
                             f"{self.snapshot_every}")
        d = STAGES[self.stage]
        return replace(
            self,
            num_steps=self.num_steps or d.num_steps, batch_size=self.batch_size or d.batch_size,
            lr=self.lr or d.lr, wdecay=d.wdecay if self.wdecay is None else self.wdecay,
            gamma=self.gamma or d.gamma, image_size=tuple(self.image_size or d.image_size))


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _build_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.wdecay, eps=cfg.epsilon)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, cfg.num_steps + 100, pct_start=0.05,
                                                cycle_momentum=False, anneal_strategy="linear")
    return opt, sched


def _infinite(loader: DataLoader, sampler, start_epoch: int):
    epoch = start_epoch
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        yield from ((epoch, b) for b in loader)
        epoch += 1


def _unpack_batch(batch: Any, device: torch.device):
    if isinstance(batch, dict):
        items = (batch["image1"], batch["image2"], batch["flow"], batch["valid"])
    else:
        items = batch[:4]
    return [t.to(device, non_blocking=True).float() for t in items]


def _params_checksum(model: torch.nn.Module) -> torch.Tensor:
    return torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg = cfg.resolved()
        self.rank, self.local_rank, self.world = _dist_info()
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
        if cfg.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise InputError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.output)
        self.is_main = self.rank == 0
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.out)  # temporary checkpoint files of a killed earlier run

        stage = STAGES[cfg.stage]
        mcfg = cfg.model
        mcfg.all_grad = mcfg.all_grad or stage.all_grad
        self.model = DEQFlow(mcfg, memory_saving=cfg.memory_saving,
                             lookup="local" if cfg.corr == "local" else "grid_sample").to(self.device)
        self.optimizer, self.scheduler = _build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=mcfg.mixed_precision and self.device.type == "cuda")
        self.step, self.epoch = 0, 0
        self.cpu_before = 0.0  # CPU seconds of earlier processes of this run (restored on resume)
        self._cpu_start = time.process_time()
        self.last_good: tuple[Path, int] | None = None  # (checkpoint, its step): named when training diverges
        self._real_sets: dict | None = None  # held-out real pairs, built at the first validation
        if cfg.init:
            state, _, _ = split_checkpoint(read_checkpoint_file(cfg.init), cfg.init)
            load_state_dict_strict(self.model, state, cfg.init)
        resume = self._resume_path()
        saved_average = self._load_resume(resume) if resume is not None else None
        # the average starts at the weights training starts from, or continues the one last.pth carries
        self.ema = _averaged(self.model, cfg.ema_decay, saved_average) if cfg.ema_decay > 0 else None
        if self.ema is not None and resume is not None and not saved_average and self.is_main:
            print(f"{resume} holds no weight average: the average (--ema-decay) starts from its weights")
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
            if self.distributed else self.model)
        self.writer = self._tensorboard() if (cfg.tensorboard and self.is_main) else None

    # ---------------------------------------------------------------- checkpoints
    def _resume_path(self) -> Path | None:
        if self.cfg.resume is None:
            return None
        if self.cfg.resume == "auto":
            path = self.out / "last.pth"
            return path if path.is_file() else None
        path = Path(self.cfg.resume)
        if path.is_dir():
            raise CheckpointError(f"--resume {path} is a folder, not a checkpoint file: give its last.pth, or "
                                  "--resume auto with --output set to that folder")
        if not path.is_file():
            raise CheckpointError(f"--resume {path}: no such checkpoint")
        return path

    def _load_resume(self, path: Path) -> dict | None:
        """Restore model, optimizer, scheduler, step and CPU time; return the weight average's state, if saved."""
        obj = read_checkpoint_file(path)
        state, _, meta = split_checkpoint(obj, str(path))
        for key in ("optimizer", "scheduler", "step"):
            if key not in obj:
                raise CheckpointError(f"{path} has no '{key}': it holds weights only; use --init to start from "
                                      "its weights with a new optimizer")
        saved_total = obj["scheduler"].get("total_steps") if isinstance(obj["scheduler"], dict) else None
        if saved_total is not None and saved_total != self.scheduler.total_steps:
            # OneCycleLR keeps the saved length; a longer run would crash once the schedule ends.
            raise CheckpointError(f"{path} was trained with --num-steps {saved_total - 100}, this run asks for "
                                  f"{self.cfg.num_steps}: the one-cycle schedule cannot be changed on resume. "
                                  "Resume with the same --num-steps, or start a new run with --init")
        load_state_dict_strict(self.model, state, str(path))
        self.optimizer.load_state_dict(obj["optimizer"])
        self.scheduler.load_state_dict(obj["scheduler"])
        if "scaler" in obj and obj["scaler"]:
            self.scaler.load_state_dict(obj["scaler"])
        self.step = int(obj["step"])
        self.epoch = int(obj.get("epoch", 0)) + 1
        self.cpu_before = float(obj.get("cpu_seconds", 0.0))
        torch.manual_seed(self.cfg.seed + self.step)
        self.last_good = (path, self.step)
        if self.is_main:
            for log in ("train_log.jsonl", "val_log.jsonl"):
                truncate_log(self.out / log, self.step)
            print(f"resumed from {path} at step {self.step}")
        return obj.get("ema") or None

    def cpu_hours(self) -> float:
        """CPU time of the whole run so far (all resumed processes; this process's threads), in hours."""
        return (self.cpu_before + time.process_time() - self._cpu_start) / 3600.0

    def save(self, name: str = "last.pth", metrics: dict | None = None, training_state: bool = True,
             averaged: bool = False) -> Path:
        """Write a checkpoint under the run folder; without training_state only the weights (snapshots);
        averaged: the weight average's weights instead of the raw ones."""
        cfg_dict = asdict(self.cfg)
        cfg_dict["model"] = self.cfg.model.to_dict()
        meta = {"variant": self.cfg.model.variant, "stage": self.cfg.stage, "step": self.step,
                "cpu_hours": round(self.cpu_hours(), 4), "weights": "ema" if averaged else "raw",
                "train_config": json.loads(json.dumps(cfg_dict, default=list)), "metrics": metrics or {}}
        extra = dict(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     scaler=self.scaler.state_dict() if self.scaler.is_enabled() else {},
                     ema=self.ema.state_dict() if self.ema is not None else {},
                     step=self.step, epoch=self.epoch,
                     cpu_seconds=self.cpu_hours() * 3600.0) if training_state else {}
        weights = self.ema.module if averaged else self.model
        payload = make_payload(weights.state_dict(), self.cfg.model.to_dict(), meta, **extra)
        return write_checkpoint(self.out / name, payload)

    def save_snapshot(self, metrics: dict) -> None:
        """The weights alone at this step: raw in snapshots/, the average (when kept) in snapshots_ema/."""
        name = f"step_{self.step:06d}.pth"
        self.save(f"snapshots/{name}", metrics=metrics, training_state=False)
        if self.ema is not None:
            self.save(f"snapshots_ema/{name}", metrics=metrics, training_state=False, averaged=True)

    def _tensorboard(self):
        tensorboard = require("torch.utils.tensorboard", "--tensorboard", package="tensorboard")
        return tensorboard.SummaryWriter(log_dir=str(self.out / "tensorboard"))

    # ---------------------------------------------------------------- data
    def _loader(self):
        import cv2

        from training.data import build_training_set

        cv2.setNumThreads(torch.get_num_threads())  # the data's warps use no more cores than the model

        dataset = build_training_set(self.cfg.stage, root=self.cfg.data_root, image_size=self.cfg.image_size,
                                     seed=self.cfg.seed, synthetic_preset=self.cfg.synthetic_preset)
        if len(dataset) < self.cfg.batch_size * self.world:
            raise InputError(f"stage {self.cfg.stage}: {len(dataset)} samples is fewer than one batch")
        if self.distributed:
            sampler = DistributedSampler(dataset, shuffle=True, seed=self.cfg.seed, drop_last=True)
        else:
            gen = torch.Generator().manual_seed(self.cfg.seed + self.step)
            sampler = RandomSampler(dataset, generator=gen)
        loader = DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=self.cfg.num_workers > 0)
        return loader, sampler

    # ---------------------------------------------------------------- loop
    def train_mode(self) -> None:
        self.model.train()
        if STAGES[self.cfg.stage].freeze_bn:
            self.model.freeze_bn()

    def train_step(self, batch) -> dict[str, float]:
        image1, image2, flow, valid = _unpack_batch(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.ddp(image1, image2)
        loss, metrics = fixed_point_correction_loss(out.flow_predictions, flow, valid, gamma=self.cfg.gamma,
                                                    drift_weight=self.cfg.drift_weight)
        bad = not bool(torch.isfinite(loss))
        if self.distributed:  # every rank must stop, or the others wait in the gradient all-reduce forever
            flag = torch.tensor([float(bad)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        if bad:
            cause = "a non-finite value on another rank" if bool(torch.isfinite(loss)) else loss.item()
            data = [name for name, t in (("image1", image1), ("image2", image2), ("ground-truth flow", flow),
                                         ("valid mask", valid)) if not bool(torch.isfinite(t).all())]
            hint = (f" The batch's {', '.join(data)} contains NaN/Inf: check the data." if data
                    else " Resume with a lower --lr.")
            raise TrainingDiverged(f"loss became {cause} at step {self.step + 1}; {self._last_good_text()}.{hint}")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        if not torch.isfinite(grad_norm) and not self.scaler.is_enabled():
            raise TrainingDiverged(f"gradient norm became {grad_norm.item()} at step {self.step + 1}; "
                                   f"{self._last_good_text()}. Resume with a lower --lr or --clip.")
        self.scaler.step(self.optimizer)
        self.scheduler.step()
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        metrics.update(loss=loss.item(), grad_norm=float(grad_norm), lr=self.scheduler.get_last_lr()[0],
                       nstep=float(out.stats.iterations), abs_residual=float(out.stats.abs_lowest.mean()))
        return metrics

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint was saved before it (nothing to resume from)"
        path, step = self.last_good
        return f"the last good checkpoint is {path} (step {step})"

    def mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged metrics over the DDP ranks, so the log describes the global batch, not rank 0's share.
        Every rank reaches the logging step together, so the collective cannot deadlock."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))

    def check_replicas(self) -> float:
        """Max difference of the parameter checksum across DDP ranks (0 when replicas agree)."""
        if not self.distributed:
            return 0.0
        local = _params_checksum(self.model).to(self.device)
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        values = torch.cat(gathered)
        return float((values.max() - values.min()).abs())

    def fit(self) -> dict[str, float]:
        cfg = self.cfg
        loader, sampler = self._loader()
        batches = _infinite(loader, sampler, self.epoch)
        self.train_mode()
        self._announce()
        bar = tqdm(total=cfg.num_steps, initial=self.step, disable=not self.is_main, desc=f"train {cfg.stage}",
                   dynamic_ncols=True)
        running: dict[str, float] = {}
        last: dict[str, float] = {}
        t0, first = time.time(), self.step
        while self.step < cfg.num_steps:
            self.epoch, batch = next(batches)
            metrics = self.train_step(batch)
            for k, v in metrics.items():
                running[k] = running.get(k, 0.0) + v
            bar.update(1)
            if self.step - first == ETA_AFTER_STEPS and self.is_main:
                self._print_eta(time.time() - t0, self.step - first)
            if self.step % cfg.log_every == 0 or self.step == cfg.num_steps:
                last, running = self._log(running, bar, t0), {}
            # checkpoint before validating, so a failing validation never costs the steps since the last save
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.num_steps:
                spread = self.check_replicas()
                if self.is_main:
                    self.save("last.pth", metrics=last)
                    if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                        self.save_snapshot(last)
                    if self.distributed:
                        (self.out / "replicas.json").write_text(json.dumps({"step": self.step,
                                                                             "checksum_spread": spread}))
                self.last_good = (self.out / "last.pth", self.step)
            if self.step % cfg.val_every == 0 and self.is_main:
                self._validate()
        bar.close()
        if self.is_main:
            self.save("final.pth", metrics=last)  # with the training state, as before
            if self.ema is not None:
                self.save("final_ema.pth", metrics=last, training_state=False, averaged=True)
        if self.writer is not None:
            self.writer.close()
        return last

    def _real_validation(self) -> dict[str, float]:
        """Held-out real-photograph EPE after an early and the 60th iteration: accuracy and fixed-point drift."""
        from training.heldout_eval import heldout_sets, quick_scores

        if self._real_sets is None:
            self._real_sets = heldout_sets()
        return quick_scores(self.model, self._real_sets)

    def _announce(self) -> None:
        """The length of the work, up front: steps to go, batch, crop size, where the results go."""
        if not self.is_main:
            return
        cfg = self.cfg
        left = cfg.num_steps - self.step
        default = ": the stage default; --num-steps N for less" if cfg.num_steps == STAGES[cfg.stage].num_steps else ""
        print(f"train {cfg.stage}: {left} step(s) to go (steps {self.step + 1}..{cfg.num_steps}{default}), "
              f"batch {cfg.batch_size} x {self.world} process(es), crops {cfg.image_size[0]}x{cfg.image_size[1]}, "
              f"output {self.out}; an ETA follows after {ETA_AFTER_STEPS} steps")

    def _print_eta(self, seconds: float, steps: int) -> None:
        left = self.cfg.num_steps - self.step
        tqdm.write(f"ETA: about {_duration(seconds / steps * left)} for the remaining {left} step(s) "
                   f"({seconds / steps:.2f} s per step over the first {steps})")

    def _log(self, running: dict[str, float], bar, t0: float) -> dict[str, float]:
        """Average the losses since the last log line; show them, append them to train_log.jsonl."""
        n = self.cfg.log_every if self.step % self.cfg.log_every == 0 else max(1, self.step % self.cfg.log_every)
        last = self.mean_over_ranks({k: v / n for k, v in running.items()})
        bar.set_postfix(loss=f"{last['loss']:.3f}", epe=f"{last['epe']:.2f}", it=f"{last['nstep']:.0f}")
        if self.writer is not None:
            for k, v in last.items():
                self.writer.add_scalar(f"train/{k}", v, self.step)
        if self.is_main:
            with open(self.out / "train_log.jsonl", "a") as fh:
                fh.write(json.dumps({"step": self.step, "time": round(time.time() - t0, 1),
                                     "cpu_hours": round(self.cpu_hours(), 4), **last}) + "\n")
        return last

    def _validate(self) -> None:
        from training.evaluate import validate

        self.model.eval()
        with self.model.solver_override(f_solver="fixed_point"):  # the official evaluation protocol
            results = validate(self.model, STAGES[self.cfg.stage].validation, root=self.cfg.data_root,
                               max_samples=self.cfg.val_samples, device=self.device, progress=False)
            if self.cfg.val_real:
                results.update(self._real_validation())
        with open(self.out / "val_log.jsonl", "a") as fh:
            fh.write(json.dumps({"step": self.step, **results}) + "\n")
        if self.writer is not None:
            for k, v in results.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"val/{k}", v, self.step)
        tqdm.write(f"step {self.step} validation: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()
                                                               if isinstance(v, float)))
        self.train_mode()


def _averaged(model: torch.nn.Module, decay: float,
              saved: dict | None = None) -> torch.optim.swa_utils.AveragedModel:
    """torch's exponential moving average of the weights; BatchNorm statistics are averaged with them (buffers),
    so the averaged model is evaluated with statistics that belong to its weights. `saved`: a state to continue."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if saved:
        ema.load_state_dict(saved)
    else:
        ema.update_parameters(model)  # the first update copies: the average starts at the model's weights
    return ema


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines log written after `step` (a resumed run repeats those steps), atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _log_step(line) <= step]
    if len(kept) != len(lines):
        atomic_write_bytes(path, "".join(kept).encode())


def _log_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (ValueError, AttributeError):  # a line cut by a kill: dropped
        return math.inf


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def train(cfg: TrainConfig) -> dict[str, float]:
    trainer = Trainer(cfg)
    try:
        results = trainer.fit()
        if trainer.distributed and dist.is_initialized():
            dist.barrier()  # every rank done (rank 0 saves and validates last) before the group is torn down
        return results
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
