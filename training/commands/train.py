"""`deqflow train`: its flags (the official DEQ-Flow names kept) and the hand-over to training.train."""

HELP = "train DEQ-Flow (stages synthetic, chairs, things, sintel, kitti); multi-GPU/CPU via torchrun"

STAGE_DEQ_KEYS = ("f_thres", "n_losses", "phantom_grad")

SOLVER_NOTE = ("the forward solver of training and of the saved checkpoint (official names --f_solver, --f_eps, "
               "--f_stop_mode). train has no --iters: --f_thres caps the training solves, and the cap at evaluation "
               "is --eval_f_thres, or f_thres x --eval_factor")


def requires(args) -> tuple[str, ...]:
    return ("torch",)


def add_arguments(p) -> None:
    from deqflow.cli_args import (
        add_batch_arg,
        add_device_arg,
        count,
        count_or_zero,
        multiple_of_8,
        non_negative_number,
        positive_number,
    )
    from training.stages import STAGES, VAL_REAL_STEPS

    p.add_argument("--stage", choices=sorted(STAGES), default="synthetic",
                   help="training stage; options marked 'the stage's' take its recipe")
    p.add_argument("--output", default=None, help="run folder (default: runs/<stage>)")
    p.add_argument("--data-root", default="datasets", help="folder holding the standard dataset layouts")
    p.add_argument("--num-steps", type=count, default=None, help="optimizer steps (default: the stage's)")
    add_batch_arg(p, "--batch-size", default=None, dest="batch_size",
                  help="images per step and process (default: the stage's)")
    p.add_argument("--lr", type=positive_number, default=None, help="peak learning rate (default: the stage's)")
    p.add_argument("--wdecay", type=non_negative_number, default=None, help="weight decay (default: the stage's)")
    p.add_argument("--gamma", type=positive_number, default=None,
                   help="fixed-point-correction loss decay (default: the stage's)")
    p.add_argument("--image-size", type=multiple_of_8(), nargs=2, default=None, metavar=("H", "W"),
                   help="crop size, multiples of 8 (default: the stage's)")
    p.add_argument("--clip", type=positive_number, default=1.0, help="gradient-norm clip")
    p.add_argument("--seed", type=int, default=1234, help="random seed")
    p.add_argument("--num-workers", type=count_or_zero, default=0,
                   help="data-loader processes (0: load in the training process)")
    p.add_argument("--ckpt-every", type=count, default=200, help="save <output>/last.pth every N steps")
    p.add_argument("--snapshot-every", type=count_or_zero, default=0,
                   help="also keep the weights every N steps under <output>/snapshots (0: never)")
    p.add_argument("--val-real", action="store_true",
                   help="validation also scores the held-out real-photograph set (after "
                        f"{' and '.join(map(str, VAL_REAL_STEPS))} iterations)")
    _add_data_and_loss_arguments(p)
    p.add_argument("--val-every", type=count, default=1000, help="validate every N steps")
    p.add_argument("--val-samples", type=count, default=16, help="samples per validation set")
    p.add_argument("--log-every", type=count, default=10, help="print the losses every N steps")
    p.add_argument("--resume", default=None, help="checkpoint to resume (model, optimizer, scheduler, step) "
                   "or 'auto' for <output>/last.pth (default: start fresh)")
    p.add_argument("--init", default=None, help="start from these weights with a fresh optimizer (default: random)")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    add_device_arg(p, "with torchrun: one GPU per process")
    p.add_argument("--memory-saving", action="store_true",
                   help="recompute the encoders' activations in backward instead of keeping them: same gradients, "
                   "less peak memory, more time per step (measured in docs/bench_train_memory_saving.md)")
    p.add_argument("--corr", choices=["auto", "all-pairs", "local"], default="auto",
                   help="correlation: all-pairs (the whole volume; memory grows with the square of the crop's pixel "
                        "count) or local (on demand, same numbers and gradients, memory linear in the pixel count; "
                        "slower per step, docs/local_correlation.md); auto: all-pairs (training does not plan the "
                        "memory of its crops)")
    _add_model_arguments(p)


def _add_data_and_loss_arguments(p) -> None:
    """What the synthetic data, the loss and the kept weights are (the knobs of a training recipe)."""
    from deqflow.cli_args import fraction, non_negative_number
    from training.stages import REALISTIC_MIX_CLASSIC_SHARE

    p.add_argument("--synthetic-preset", choices=["classic", "realistic", "realistic-mix", "realistic-precise",
                                                         "realistic-stereo"],
                   default="classic", help="scene options of the synthetic stage (classic: layered scenes; realistic: "
                   f"photograph-like; realistic-mix: that with {REALISTIC_MIX_CLASSIC_SHARE * 100:g}%% classic scenes; "
                   "realistic-precise: realistic-mix with half the photograph-like scenes moving 0.2-3 px; "
                   "realistic-stereo: that with a quarter rectified stereo scenes, large horizontal disparities)")
    p.add_argument("--drift-weight", type=non_negative_number, default=0.0,
                   help="loss penalty on a sampled DEQ state that is worse than the state before it")
    p.add_argument("--ema-decay", type=fraction, default=0.0,
                   help="also keep an exponential moving average of the weights with this decay per step (e.g. "
                        "0.999), written beside the raw weights as snapshots_ema/ and final_ema.pth (0: none)")


def _add_model_arguments(p) -> None:
    """The model and DEQ flags (their defaults come from the torch-free model configs)."""
    from deqflow.cli_args import add_solver_group, count, iterations
    from training.commands.model_args import add_model_args
    from training.deq.args import add_deq_args
    from training.deq.config import DEQConfig

    add_model_args(p)
    add_deq_args(p)
    d = DEQConfig()
    # The stage recipe sets these unless given: they replace the official definitions (same names).
    g = p.add_argument_group("stage recipe", conflict_handler="resolve")
    g.add_argument("--f_thres", type=iterations, default=None,
                   help="iteration cap of the training solves (default: the stage's)")
    g.add_argument("--n_losses", type=count, default=None,
                   help="states sampled along the trajectory, fixed-point correction (default: the stage's)")
    g.add_argument("--phantom_grad", type=count, nargs="+", default=None,
                   help="unrolled phantom-gradient steps, one value or one per loss term (default: the stage's)")
    add_solver_group(p, ("solver", "tol", "stop_mode"), title="forward solver", description=SOLVER_NOTE,
                     defaults={"solver": d.f_solver, "tol": d.f_tol, "stop_mode": d.f_stop_mode},
                     dests={"solver": "f_solver", "tol": "f_eps", "stop_mode": "f_stop_mode"}, replace_existing=True)


def run(args) -> int:
    from deqflow.fileio import check_output_dir
    from training.commands.model_args import model_config_from_args
    from training.deq.args import deq_config_from_args
    from training.stages import STAGES
    from training.train import TrainConfig, train

    check_output_dir(args.output or f"runs/{args.stage}")
    stage = STAGES[args.stage]
    if args.f_thres is None:
        args.f_thres = stage.f_max_iter
    if args.n_losses is None:
        args.n_losses = stage.n_states
    if args.phantom_grad is None:
        args.phantom_grad = [stage.phantom_grad]
    deq = deq_config_from_args(args)
    model_cfg = model_config_from_args(args, deq)
    cfg = TrainConfig(stage=args.stage, output=args.output or f"runs/{args.stage}", data_root=args.data_root,
                      num_steps=args.num_steps, batch_size=args.batch_size, lr=args.lr, wdecay=args.wdecay,
                      gamma=args.gamma, image_size=tuple(args.image_size) if args.image_size else None,
                      clip=args.clip, seed=args.seed, num_workers=args.num_workers, ckpt_every=args.ckpt_every,
                      val_every=args.val_every, val_samples=args.val_samples, log_every=args.log_every,
                      resume=args.resume, init=args.init, snapshot_every=args.snapshot_every,
                      synthetic_preset=args.synthetic_preset, drift_weight=args.drift_weight,
                      ema_decay=args.ema_decay,
                      val_real=args.val_real,
                      tensorboard=args.tensorboard, device=args.device, memory_saving=args.memory_saving,
                      corr="local" if args.corr == "local" else "all-pairs", model=model_cfg)
    train(cfg)
    return 0
