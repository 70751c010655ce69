HELP = "train DEQ-Flow (stages synthetic, chairs, things, sintel, kitti); multi-GPU/CPU via torchrun"

STAGE_DEQ_KEYS = ("f_thres", "n_losses", "phantom_grad")


def add_arguments(p) -> None:
    # The DEQ/model flags live in torch-backed modules: add them only when `train` is used, so that
    # building the `deqflow` parser (`deqflow --help`, the runtime commands) does not import torch.
    from training.commands import add_arguments_lazily

    add_arguments_lazily(p, _add_arguments)


def _add_arguments(p) -> None:
    from training.commands.model_args import add_model_args
    from training.deq.args import add_deq_args
    from training.stages import STAGES

    p.add_argument("--stage", choices=sorted(STAGES), default="synthetic")
    p.add_argument("--output", default=None, help="run folder (default runs/<stage>)")
    p.add_argument("--data-root", default="datasets", help="folder holding the standard dataset layouts")
    p.add_argument("--num-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--wdecay", type=float, default=None)
    p.add_argument("--gamma", type=float, default=None, help="fixed-point-correction loss decay")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="crop size")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="also keep the weights every N steps under <output>/snapshots (0: never)")
    p.add_argument("--synthetic-preset", choices=["classic", "realistic"], default="classic",
                   help="scene options of the synthetic stage (classic: the shipped model's data)")
    p.add_argument("--val-real", action="store_true",
                   help="validation also scores the held-out real-photograph set (after 16 and 60 iterations)")
    p.add_argument("--drift-weight", type=float, default=0.0,
                   help="loss penalty on a sampled DEQ state that is worse than the state before it")
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--val-samples", type=int, default=16)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", default=None, help="checkpoint to resume (model, optimizer, scheduler, step) "
                   "or 'auto' for <output>/last.pth")
    p.add_argument("--init", default=None, help="start from these weights with a fresh optimizer")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda (with torchrun: one GPU per process)")
    add_model_args(p)
    add_deq_args(p)
    # Stage defaults (official per-stage recipe) apply unless these are given.
    p.set_defaults(**{k: None for k in STAGE_DEQ_KEYS})


def run(args) -> int:
    from training.commands.model_args import model_config_from_args
    from training.deq.args import deq_config_from_args
    from training.stages import STAGES
    from training.train import TrainConfig, train

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
                      val_real=args.val_real,
                      tensorboard=args.tensorboard, device=args.device, model=model_cfg)
    train(cfg)
    return 0
