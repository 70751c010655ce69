"""Model flags shared by train / evaluate, with the official names (--tiny, --huge, --gma, --wnorm ...)."""

from __future__ import annotations

import argparse

from deqflow.cli_args import count, fraction
from training.config import VARIANT_FLAGS, VARIANTS, ModelConfig
from training.deq.config import DEQConfig


def add_variant_arg(p, note: str) -> argparse.Action:
    """--variant: a DEQ-Flow variant letter (train: the one to build; export: the one expected)."""
    return p.add_argument("--variant", choices=tuple(VARIANTS), default=None, help=f"DEQ-Flow variant; {note}")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    add_variant_arg(g, "default: B; the official flags below also work")
    for letter, flag in VARIANT_FLAGS.items():
        g.add_argument(f"--{flag}", action="store_true", help=f"variant {letter}")
    g.add_argument("--gma", action="store_true", help="global motion aggregation")
    g.add_argument("--no-wnorm", dest="no_wnorm", action="store_true",
                   help="disable weight norm on the update block (on by default, as in every official recipe)")
    g.add_argument("--all_grad", action="store_true",
                   help="let gradients flow through the flow coordinates inside the update (official flag)")
    g.add_argument("--mixed_precision", action="store_true",
                   help="autocast the encoders and update block to float16 on CUDA (official flag)")
    g.add_argument("--dropout", type=fraction, default=0.0, help="dropout probability of the encoders")
    g.add_argument("--old_version", action="store_true",
                   help="flow-head width capped as in DEQ-Flow v1 (official flag)")
    g.add_argument("--encoder-dims", type=count, nargs=3, default=None, metavar=("D1", "D2", "D3"),
                   help="encoder stage widths (default: the official 64 96 128)")


def model_config_from_args(ns: argparse.Namespace, deq: DEQConfig) -> ModelConfig:
    flagged = [letter for letter, flag in VARIANT_FLAGS.items() if getattr(ns, flag, False)]
    if len(flagged) > 1 or (flagged and ns.variant and ns.variant != flagged[0]):
        from deqflow.errors import InputError

        raise InputError("choose one variant: --variant or one of --tiny/--large/--huge/--gigantic")
    variant = ns.variant or (flagged[0] if flagged else "B")
    kwargs = {}
    if ns.encoder_dims:
        kwargs["encoder_dims"] = tuple(ns.encoder_dims)
    return ModelConfig(variant=variant, gma=ns.gma, wnorm=not ns.no_wnorm, all_grad=ns.all_grad,
                       mixed_precision=ns.mixed_precision, dropout=ns.dropout, old_version=ns.old_version,
                       deq=deq, **kwargs)
