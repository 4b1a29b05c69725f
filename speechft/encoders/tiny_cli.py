"""`speechft encoder tiny FAMILY --out DIR`."""

from __future__ import annotations


def add_arguments(p):
    from ..cli import non_negative_int
    from .families import FAMILY_INFO

    p.add_argument("family", choices=sorted(FAMILY_INFO))
    p.add_argument("--out", required=True, help="output encoder folder")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(args):
    from . import tiny_encoder

    enc = tiny_encoder(args.family, seed=args.seed)
    out = enc.save(args.out, overwrite=args.overwrite)
    n = sum(p.numel() for p in enc.model.parameters())
    print(f"wrote tiny {args.family} encoder ({n:,} parameters, {enc.num_layers} layers) to {out}")
