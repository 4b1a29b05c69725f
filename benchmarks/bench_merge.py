"""Benchmark: `speechft merge` (streaming) vs the naive merge, wall time and peak RSS.

    python benchmarks/bench_merge.py                 # HuBERT-Base size (94 M parameters, fp32)
    python benchmarks/bench_merge.py --size 1b       # ~1 B parameters (HuBERT X-Large shapes, fp16)
    python benchmarks/bench_merge.py --size all --repeats 3

Variants, each measured in a fresh subprocess, interleaved, median of --repeats runs:
  io       read every input byte once and write one model's bytes once (the floor)
  io+sha256  the same, also hashing every byte read and written (the floor with provenance)
  speechft merge_encoders(): streaming reads, fp32 math, incremental writes, sha256 of
           inputs and output, provenance
  speechft-nohash  the same with sha256 stubbed out (a diagnostic: what hashing costs)
  ties-tensor  merge_encoders(method="ties", scope="tensor"): per-tensor top-k trim, one read
  ties-global  merge_encoders(method="ties"): the paper's whole-task-vector trim, whose exact
           threshold costs two walks over the inputs before the merge (three reads in all)
  safeopen the same streaming loop but reading with safetensors.safe_open (mmap)
  naive    safetensors load_file() both state dicts, compute, save_file() (base only)
End to end (the whole process, imports included, as a user runs it; wall clock, CPU and peak RSS
of that process from os.wait4):
  cli           `python -m speechft merge --pretrained PRE --finetuned FT --out DIR --quiet`
  naive-script  the naive merge as a 9-line script (NAIVE_SCRIPT below): imports torch and
                safetensors, load_file both, lerp, save_file (base only)

Peak RSS: each child imports what it needs, then resets its high-water mark
(`echo 5 > /proc/self/clear_refs`), records VmRSS as its baseline, runs, and reports
VmHWM. VmHWM counts every resident page of the process: anonymous memory *and* pages of
memory-mapped files, which is how mmap-based reading shows up. "extra" = peak - baseline
is the memory the merge itself needed; "peak" includes the Python/torch/transformers
imports. Inputs are read once beforehand so every variant starts from a warm page cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()

# The naive load-compute-save merge a user would write, run end to end like the CLI.
NAIVE_SCRIPT = """\
import sys

import torch
from safetensors.torch import load_file, save_file

a = load_file(sys.argv[1] + "/model.safetensors")
b = load_file(sys.argv[2] + "/model.safetensors")
merged = {k: torch.lerp(a[k].float(), b[k].float(), 0.25).to(a[k].dtype) for k in a}
save_file(merged, sys.argv[3] + "/model.safetensors", metadata={"format": "pt"})
"""
END_TO_END = ("cli", "naive-script")


# ---------------------------------------------------------------- children (one measurement each)


def _status() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def child(variant: str, pre: str, ft: str, out: str) -> None:
    import torch

    if variant in ("speechft", "speechft-nohash", "ties-tensor", "ties-global"):
        import speechft.safetensors_io
        from speechft.merge import merge_encoders

        if variant == "speechft-nohash":  # diagnostic only: how much of the time is sha256

            class NoHash:
                def update(self, data):
                    pass

                def hexdigest(self):
                    return "0" * 64

            speechft.safetensors_io.hashlib = type("hashlib", (), {"sha256": staticmethod(lambda *a: NoHash())})
    elif variant == "safeopen":
        from safetensors import safe_open

        from speechft.safetensors_io import ShardedWriter, safetensors_order
    elif variant == "naive":
        from safetensors.torch import load_file, save_file
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status()["VmRSS"]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    if variant in ("io", "io+sha256"):
        # The floor: every input byte read once, one model's worth of bytes written once
        # (and, for io+sha256, every one of those bytes hashed, as provenance requires).
        hashes = [hashlib.sha256() for _ in range(3)] if variant == "io+sha256" else None
        buf_a, buf_b = bytearray(8 << 20), bytearray(8 << 20)
        with (
            open(Path(pre) / "model.safetensors", "rb", buffering=0) as fa,
            open(Path(ft) / "model.safetensors", "rb", buffering=0) as fb,
            open(Path(out) / "model.safetensors", "wb") as fo,
        ):
            while n := fa.readinto(buf_a):
                m = fb.readinto(buf_b)
                fo.write(memoryview(buf_a)[:n])
                if hashes:
                    for h, b, k in zip(hashes, (buf_a, buf_b, buf_a), (n, m, n)):
                        h.update(memoryview(b)[:k])
    elif variant in ("speechft", "speechft-nohash"):
        merge_encoders(pre, [ft], out=Path(out) / "merged", alpha=0.25, progress=False)
    elif variant in ("ties-tensor", "ties-global"):
        scope = variant.removeprefix("ties-")
        merge_encoders(pre, [ft], method="ties", scope=scope, out=Path(out) / "merged", progress=False)
    elif variant == "safeopen":
        with (
            safe_open(Path(pre) / "model.safetensors", "pt") as fa,
            safe_open(Path(ft) / "model.safetensors", "pt") as fb,
        ):
            spec = {}
            for k in fa.keys():
                sl = fa.get_slice(k)
                spec[k] = (
                    getattr(
                        torch, {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(sl.get_dtype(), "float32")
                    ),
                    tuple(sl.get_shape()),
                )
            order = safetensors_order(spec)
            w = ShardedWriter(Path(out), spec, order)
            for k in order:
                a = fa.get_tensor(k)
                b = fb.get_tensor(k)
                w.write(k, torch.lerp(a.float(), b.float(), 0.25).to(a.dtype))
            w.close()
    elif variant == "naive":
        a = load_file(Path(pre) / "model.safetensors")
        b = load_file(Path(ft) / "model.safetensors")
        merged = {k: torch.lerp(a[k].float(), b[k].float(), 0.25).to(a[k].dtype) for k in a}
        save_file(merged, Path(out) / "model.safetensors", metadata={"format": "pt"})
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    st = _status()
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss": st["VmHWM"], "base_rss": base}))


def evict(folder: Path) -> None:
    """Drop one folder's files from the page cache (only ours: no global drop_caches)."""
    for p in folder.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(variant: str, pre: Path, ft: Path, work: Path, cold: bool = False) -> dict:
    if cold:
        evict(pre)
        evict(ft)
    out = work / f"out_{variant.replace('+', '_')}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if variant in END_TO_END:
        return {**end_to_end(variant, pre, ft, out, env), "loadavg": load}
    res = subprocess.run(
        [sys.executable, str(HERE), "--child", variant, str(pre), str(ft), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "loadavg": load}


# Forks and execs the measured command from a bare interpreter and reports that child's rusage.
# Linux keeps a process's RSS high-water mark across exec, so a child forked straight from this
# driver (which holds torch and the built model) would report the driver's RSS, not its own.
TIMER = """\
import json, os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, u = os.wait4(pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t,
                  "cpu_s": u.ru_utime + u.ru_stime, "peak_rss": u.ru_maxrss * 1024}))
"""


def end_to_end(variant: str, pre: Path, ft: Path, out: Path, env: dict) -> dict:
    """Run one whole process (imports included) and read its own wall time, CPU time and peak RSS."""
    if variant == "cli":
        argv = [sys.executable, "-m", "speechft", "merge", "--pretrained", str(pre), "--finetuned", str(ft)]
        argv += ["--out", str(out / "merged"), "--quiet"]
    else:
        argv = [sys.executable, "-c", NAIVE_SCRIPT, str(pre), str(ft), str(out)]
    res = subprocess.run([sys.executable, "-S", "-c", TIMER, *argv], capture_output=True, text=True, env=env)
    r = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else None
    if r is None or r["rc"] != 0:
        raise SystemExit(f"{variant} failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    # No in-process baseline here: the whole process counts, imports included.
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss": r["peak_rss"], "base_rss": 0}


# ---------------------------------------------------------------- building the checkpoints


def build_base(work: Path) -> tuple[Path, Path]:
    """HuBERT Base from HubertConfig() defaults, random weights; the 'fine-tuned' copy is
    theta0 plus small noise (same layout, so the merge does real arithmetic everywhere)."""
    import torch
    from transformers import HubertConfig

    from speechft.encoders import family_class

    cls = family_class("hubert")
    enc = cls.from_config(HubertConfig(), provenance={"source": "bench: random HuBERT Base"}, seed=0)
    pre = enc.save(work / "pre")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)
    ft = enc.save(work / "ft", provenance={"source": "bench: perturbed HuBERT Base"})
    return pre, ft


def build_synthetic(work: Path, dtype_name: str = "float16") -> tuple[Path, Path]:
    """~1 B parameters with HuBERT X-Large's names and shapes (hidden 1280, 48 layers, FFN
    5120), written tensor by tensor so building it needs no more memory than merging it."""
    import torch
    from transformers import HubertConfig, HubertModel

    from speechft.io_utils import write_json
    from speechft.safetensors_io import ShardedWriter, safetensors_order

    cfg = HubertConfig(
        hidden_size=1280,
        num_hidden_layers=48,
        num_attention_heads=16,
        intermediate_size=5120,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    with torch.device("meta"):
        model = HubertModel(cfg)
    dtype = getattr(torch, dtype_name)
    spec = {k: (dtype, tuple(v.shape)) for k, v in model.state_dict().items()}
    order = safetensors_order(spec)
    pre, ft = work / "pre", work / "ft"
    writers = []
    for folder, src in ((pre, "theta0"), (ft, "fine-tuned")):
        folder.mkdir()
        cfg.save_pretrained(folder)
        write_json(folder / "speechft.json", {"format": 1, "family": "hubert", "source": f"bench: synthetic {src}"})
        writers.append(ShardedWriter(folder, spec, order))
    g = torch.Generator().manual_seed(0)
    for k in order:
        t0 = torch.randn(spec[k][1], generator=g).mul_(0.02)
        writers[0].write(k, t0.to(dtype))
        writers[1].write(k, t0.add_(torch.randn(spec[k][1], generator=g).mul_(2e-3)).to(dtype))
    for w in writers:
        w.close()
    return pre, ft


# ---------------------------------------------------------------- driver


def run(size: str, repeats: int, workroot: Path | None, cold: bool = False, only: list[str] | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench_merge_{size}_", dir=workroot))
    try:
        t = time.perf_counter()
        pre, ft = build_base(work) if size == "base" else build_synthetic(work)
        build_s = time.perf_counter() - t
        model_bytes = (pre / "model.safetensors").stat().st_size
        n_params = None
        from speechft.safetensors_io import Checkpoint

        ck = Checkpoint(pre)
        n_params = sum(int(torch_numel(s)) for _, s in ck.spec().values())
        ck.close()
        for p in (pre, ft):  # warm the page cache for everyone (unless --cold evicts it again)
            with open(p / "model.safetensors", "rb") as f:
                while f.read(64 << 20):
                    pass
        variants = ["io", "io+sha256", "speechft", "speechft-nohash", "ties-tensor", "ties-global", "safeopen"]
        variants += ["naive"] if size == "base" else []
        variants += ["cli", "naive-script"] if size == "base" else ["cli"]
        variants = [v for v in variants if v in only] if only else variants
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(repeats):
            for v in variants:  # interleaved, so load from other processes hits all alike
                runs[v].append(measure(v, pre, ft, work, cold))
                print(f"  {size} {v}: {runs[v][-1]}", file=sys.stderr)
        summary = {}
        for v, rs in runs.items():
            summary[v] = {
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "peak_rss": statistics.median(r["peak_rss"] for r in rs),
                "extra_rss": statistics.median(r["peak_rss"] - r["base_rss"] for r in rs),
            }
        loads = [r["loadavg"] for rs in runs.values() for r in rs]
        return {
            "size": size,
            "params": n_params,
            "model_bytes": model_bytes,
            "build_s": build_s,
            "repeats": repeats,
            "cache": "cold" if cold else "warm",
            "loadavg": statistics.median(loads),
            "results": summary,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def torch_numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def table(report: dict) -> str:
    mb = 1 / 1e6
    io = report["results"]["io"]
    rows = [
        "| variant | wall s | wall / io | CPU s | CPU / io | peak RSS MB | peak / model | extra RSS MB "
        "| extra / model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, r in report["results"].items():
        if v in END_TO_END:
            continue
        rows.append(
            f"| {v} | {r['wall_s']:.2f} | {r['wall_s'] / io['wall_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['cpu_s'] / io['cpu_s']:.2f} | {r['peak_rss'] * mb:.0f} | "
            f"{r['peak_rss'] / report['model_bytes']:.2f} | {r['extra_rss'] * mb:.0f} | "
            f"{r['extra_rss'] / report['model_bytes']:.2f} |"
        )
    head = (
        f"{report['size']}: {report['params'] / 1e6:.1f} M parameters, one model file "
        f"{report['model_bytes'] * mb:.0f} MB, {report['cache']} page cache, median of {report['repeats']}, "
        f"load average {report['loadavg']:.1f} on {os.cpu_count()} cores"
    )
    e2e = [v for v in END_TO_END if v in report["results"]]
    if not e2e:
        return head + "\n\n" + "\n".join(rows)
    ref = report["results"].get("naive-script")
    rows += [
        "",
        "End to end (whole process, imports included):",
        "",
        "| process | wall s | wall / naive-script | CPU s | CPU / naive-script | peak RSS MB | peak / model |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in e2e:
        r = report["results"][v]
        wall, cpu = (f"{r[k] / ref[k]:.2f}" if ref else "-" for k in ("wall_s", "cpu_s"))
        rows.append(
            f"| {v} | {r['wall_s']:.2f} | {wall} | {r['cpu_s']:.2f} | {cpu} | "
            f"{r['peak_rss'] * mb:.0f} | {r['peak_rss'] / report['model_bytes']:.2f} |"
        )
    return head + "\n\n" + "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["base", "1b", "all"], default="base")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary checkpoints go (needs ~8 GB free for --size 1b)"
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="evict the inputs from the page cache before every "
        "run (posix_fadvise DONTNEED on our files only), so reads come from disk",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    ap.add_argument("--variants", nargs="+", default=None, help="run only these variants (io is always needed)")
    args = ap.parse_args()
    sizes = ["base", "1b"] if args.size == "all" else [args.size]
    only = sorted({"io", *args.variants}) if args.variants else None
    reports = [run(s, args.repeats, args.workdir, args.cold, only) for s in sizes]
    for r in reports:
        print(table(r) + "\n")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
