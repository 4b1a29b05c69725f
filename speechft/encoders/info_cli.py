"""`speechft encoder info DIR`."""

from __future__ import annotations

import json


def add_arguments(p):
    p.add_argument("encoder", help="encoder folder, or Hugging Face Hub id org/name[@revision]")


def main(args):
    from . import load_encoder

    enc = load_encoder(args.encoder)
    n = sum(p.numel() for p in enc.model.parameters())
    front = sum(p.numel() for _, p in enc.frontend_parameters())
    print(
        f"family: {enc.family}\nlayers: {enc.num_layers}\nhidden size: {enc.hidden_size}\n"
        f"parameters: {n:,} (front end {front:,})"
    )
    print("provenance: " + json.dumps(enc.provenance, indent=2))
