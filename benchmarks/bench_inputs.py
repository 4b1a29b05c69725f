"""What the probe benchmarks measure on: `--encoder` (default: the embedded default encoder) and `--bench`
(default: a synthetic benchmark generated into a temp folder). Imported by the scripts beside it."""

from __future__ import annotations

from pathlib import Path


def encoder_and_bench(encoder: Path | None, bench: Path | None, tmp: Path, size: str, tasks: list[str]):
    """(encoder folder, benchmark folder): the ones given, or the embedded default encoder and a fresh
    `speechft data synth` benchmark of `tasks` at `size` under `tmp`."""
    if encoder is None:
        from speechft.encoders.default import default_encoder_dir

        encoder = default_encoder_dir()
    if bench is None:
        from speechft.data.synth import synthesize_benchmark

        bench = tmp / "bench"
        synthesize_benchmark(bench, size=size, tasks=tasks, engines=["espeak-ng"], progress=False)
    return encoder, bench
