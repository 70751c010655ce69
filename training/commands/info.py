HELP = ("describe a checkpoint as JSON: format (deqflow or official), variant, parameter count, model and solver "
        "config, metadata (stage, training step, ...)")


def requires(args) -> tuple[str, ...]:
    return ("torch",)


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="official DEQ-Flow .pth or deqflow checkpoint")


def run(args) -> int:
    import json

    from training.checkpoint import load_model

    model, meta = load_model(args.checkpoint)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"format": checkpoint_format(meta), "variant": model.cfg.variant, "parameters": n_params,
                      "model_config": model.cfg.to_dict(),
                      "meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, dict))}},
                     indent=2, default=str))
    return 0


def checkpoint_format(meta: dict) -> str:
    """'deqflow' for the toolkit's own files (they record the toolkit version), else 'official' (a plain state
    dict, as the official DEQ-Flow code saves them)."""
    return "deqflow" if meta.get("toolkit_version") else "official"
