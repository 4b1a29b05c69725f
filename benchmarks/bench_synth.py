"""`speechft data synth`: what determinism costs, and what the cache saves.

    OMP_NUM_THREADS=1 python benchmarks/bench_synth.py [--size small|full]

1. espeak-ng per utterance: speechft's forked worker (every clip from pristine library
   state, byte-identical whatever came before) vs driving libespeak-ng in-process (state
   leaks between utterances). Same 200 sentences, same voices.
2. The benchmark: cold cache vs warm cache (a rerun, or a resume after a kill).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from speechft.data import espeak, synth
from speechft.data import synth_text as T


def in_process_library():
    import espeakng_loader

    spec = importlib.util.spec_from_file_location("_w", Path(espeak.__file__).with_name("_espeak_worker.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Library(espeakng_loader.get_library_path(), espeakng_loader.get_data_path())


def bench_per_utterance(n: int = 200) -> None:
    texts = T.sentences(np.random.default_rng(0), n)
    voices = ["en-us+f3", "en-us+klatt", "en+m3", "en-gb-x-rp+croak"]
    jobs = [(texts[i], voices[i % len(voices)]) for i in range(n)]
    espeak.synthesize("warm up")
    t = time.perf_counter()
    forked = [espeak.synthesize(x, v).audio for x, v in jobs]
    t_fork = time.perf_counter() - t
    lib = in_process_library()
    t = time.perf_counter()
    raw = [lib.synth(v, x, 175, 50)[1] for x, v in jobs]
    t_in = time.perf_counter() - t
    # determinism: the same utterance again after everything else
    again_fork = espeak.synthesize(*jobs[0]).audio
    again_in = lib.synth(jobs[0][1], jobs[0][0], 175, 50)[1]
    audio_s = sum(len(a) for a in forked) / 16000
    print(
        f"| per utterance, {n} sentences ({audio_s:.0f} s of audio) | {1000 * t_in / n:.1f} ms | "
        f"{1000 * t_fork / n:.1f} ms (incl. resampling to 16 kHz) | {t_fork / t_in:.2f}x | "
        f"in-process repeat identical: {hashlib.sha1(raw[0]).digest() == hashlib.sha1(again_in).digest()}; "
        f"forked repeat identical: {np.array_equal(forked[0], again_fork)} |"
    )


def bench_benchmark(size: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter()
        s = synth.synthesize_benchmark(
            d / "cold", size=size, cache_dir=d / "cache", engines=["espeak-ng"], progress=False
        )
        cold = time.perf_counter() - t
        t = time.perf_counter()
        synth.synthesize_benchmark(d / "warm", size=size, cache_dir=d / "cache", engines=["espeak-ng"], progress=False)
        warm = time.perf_counter() - t
        hours = sum(sum(x["hours"].values()) for x in s["tasks"].values())
        print(
            f"| `--size {size}`: {s['clips']} clips, {hours:.2f} h | {cold:.1f} s cold cache | {warm:.2f} s warm "
            f"cache | {cold / warm:.0f}x | {s['clips'] / cold:.0f} clips/s cold |"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=list(synth.SIZES))
    args = p.parse_args(argv)
    print("| what | baseline | speechft | ratio | notes |")
    print("|---|---|---|---|---|")
    bench_per_utterance()
    bench_benchmark(args.size)


if __name__ == "__main__":
    sys.exit(main())
