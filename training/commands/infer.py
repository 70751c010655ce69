HELP = ("estimate the flow of an image pair and write flow.flo, colour pictures (flow, panel, residual plot; "
        "error map with --gt) and summary.json")


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="official DEQ-Flow .pth or deqflow checkpoint")
    p.add_argument("--image1", required=True)
    p.add_argument("--image2", required=True)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--iters", type=int, default=None, help="solver iterations (default: the checkpoint's)")
    p.add_argument("--gt", default=None, help="optional ground-truth flow (.flo / KITTI .png / .pfm) for EPE")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from pathlib import Path

    from deqflow.image_io import read_image
    from training.checkpoint import load_model
    from training.reporting import report_pair

    model, _ = load_model(args.checkpoint, device=args.device)
    img1, img2 = read_image(args.image1), read_image(args.image2)
    gt = None
    if args.gt:
        from deqflow.flow_io import read_flow

        gt = read_flow(args.gt)
    report_pair(model, img1, img2, Path(args.output), gt=gt, iters=args.iters, device=args.device)
    return 0
