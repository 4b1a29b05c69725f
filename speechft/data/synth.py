"""`speechft data synth`: a deterministic, cached synthetic "mini-SUPERB" made with speech synthesis.

    speechft data synth --out bench/ [--size small|demo|full] [--seed 0]
        [--tasks pr asr ks sid lid style pr_de sf asv qbe sd]

writes one task folder per task (see `speechft.data.tasks`), all from espeak-ng (plus flite
voices when the `flite` program is installed):

    pr     phoneme recognition: CTC over a 40-phone English inventory (espeak's IPA events)
    asr    character CTC on the same sentences (the same audio as pr)
    ks     keyword spotting: yes no up down left right on off stop go, the ten digits, 'unknown'
    sid    voice identification over 24 voices (8 variants x 3 accents); different sentences in
           train and test, and augmentation (channel EQ, noise 0-20 dB SNR, gain, +-10% rate,
           pitch jitter, 1.5-2.5 s crops)
    lid    language identification over 10 languages (digit strings read as number words)
    style  speaking style: 3 rates x 3 pitch registers (a prosody task - not emotion)
    pr_de  German phoneme recognition: CTC over a 42-phone German inventory, on German sentences
           and digit strings (the new language of the continued pre-training scenario: its
           train audio is the "new-language audio")
    sf     slot filling: alarm / weather / music commands, characters plus slot markers (SUPERB SF)
    asv    speaker verification: train speakers, then trials between held-out voices (SUPERB ASV)
    qbe    query by example: spoken terms in one voice, sentences holding them in others (SUPERB QbE)
    sd     speaker diarization: two voices overlapping at a random offset, RTTM references (SUPERB SD)

Sizes (seed 0, espeak-ng only; hours of audio summed over all tasks and splits, pr and asr
each counted although they share their clips - an encoder probed on every task runs over it all):

    small   1,078 examples  ~0.42 h   tests and the quick demo; ~15 s to generate here
    demo    2,702 examples  ~1.05 h   the full `speechft demo` on 2 CPU cores; ~30 s to generate
    full   23,250 examples  ~8.9 h    thousands per task (hours estimated from the demo's mean
                                      clip lengths); minutes to generate

Voices are espeak-ng accents x voice variants. The variants are split by the seed into
train / dev / test groups: in pr, asr, ks, lid, style, pr_de, sf, asv, qbe and sd the dev and test clips are spoken
by variants that never speak in train, so those tasks measure generalisation to new
voices. Sentences come from a word-list grammar (`synth_text`), so nothing is downloaded.

Every clip is a pure function of (engine, engine version, voice, text, rate, pitch,
augmentation incl. its seed) and is cached under that key in
`$SPEECHFT_CACHE/synth` (default ~/.cache/speechft/synth), written atomically: a killed
run resumes where it stopped, a rerun reuses everything, and the same seed gives
byte-identical manifests and audio. The benchmark folder itself appears atomically.

Layout: `synth_plan` decides which clips and rows a benchmark holds (tables, voices, one
planner per task), `synth_clips` makes and caches one clip (engines, augmentation),
`synth_text` supplies the words and phone inventories; this module runs the plan and
writes the folders, their READMEs and the CLI.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cli import add_quiet_option
from ..errors import SpeechFTError
from ..io_utils import atomic_dir, check_output_location, write_json
from . import synth_slots, synth_speakers
from . import synth_text as T
from .audio import SAMPLE_RATE
from .synth_clips import ENGINES, Clip, ClipCache, augment, default_cache_dir, load_engines
from .synth_plan import (
    LANGUAGES,
    PHONE_TASKS,
    SIZES,
    SPLITS,
    TASKS,
    Plan,
    Voices,
    check_args,
    make_plan,
    planned_examples,
    style_labels,
)
from .tasks import write_task_folder

# What tests, benchmarks and the demo reach through this module (the rest lives in synth_plan / synth_clips).
__all__ = ["SIZES", "TASKS", "Clip", "augment", "planned_examples", "synthesize_benchmark", "add_arguments", "main"]

# 2: task pr_de, size demo; 3: tasks sf, asv, qbe; 4: task sd; 5: sd in 3 turns; 6: sf templates share carriers
GENERATOR_VERSION = "speechft-synth 6"


# ------------------------------------------------------------------ task specs and READMEs
TASK_INFO = {
    "pr": "Phoneme recognition: CTC over a 40-phone English inventory; targets are espeak-ng's IPA phoneme "
    "events for the voice actually speaking, stress and length marks stripped, mapped by "
    "`speechft.data.synth_text.ESPEAK_TO_PHONE`.",
    "asr": "Character ASR: CTC over lower-case letters and the word separator '|', on the same clips as pr.",
    "ks": "Keyword spotting: 20 keywords (yes no up down left right on off stop go and the ten digits) "
    "and 'unknown' (other words), single words at several rates and pitches, placed at a random "
    "offset in a 1 s window with background noise (10-40 dB SNR).",
    "sid": "Voice identification (closed set): 8 espeak-ng voice variants x 3 accents each (plus flite voices "
    "when installed), so telling voices apart takes pronunciation as well as timbre. Train, dev and test "
    "use different sentences; every clip is augmented (random channel EQ, noise 0-20 dB SNR "
    "white/pink/brown, random gain, +-10% rate, pitch jitter, 1.5-2.5 s random crop) so that voice "
    "identity, not recording conditions or a fixed long-term spectrum, is what is learned.",
    "lid": "Language identification: digit strings (1-3 numbers of up to 4 digits) read as number words by "
    "espeak-ng in each language; mild noise.",
    "style": "Speaking style: 3 speaking rates (slow 115-135, normal 160-185, fast 215-245 words/min) x 3 "
    "pitch registers (espeak pitch low 15-30, mid 42-58, high 70-85), noise 5-30 dB SNR. A prosody "
    "task; it is not emotion recognition.",
    "sf": "Slot filling (SUPERB SF's format): assistant commands in three domains (alarms, weather, music; "
    "`speechft.data.synth_slots`), transcribed as lower-case characters with slot markers around each "
    "value (`set an alarm for B-time seven thirty E-time`); CTC over characters and markers, scored by "
    "slot-type F1 (the main metric) and slot-value CER.",
    "asv": "Speaker verification (SUPERB ASV's form): train on 24 voices (voice variant + accent) labelled "
    "by speaker; dev and test are trials (`dev_trials.txt`, `test_trials.txt`, `1|0 PATH_A PATH_B`) between "
    "voices of held-out variants, each in two accents (`speechft.data.synth_speakers`). Clips augmented as "
    "sid's. Scored by EER (and minDCF) of the cosine similarity of the head's embeddings.",
    "qbe": "Query by example (SUPERB QbE's form): no training. In dev and test, ten long words "
    "(`speechft.data.synth_speakers.QBE_TERMS`) are spoken once each by one voice (the queries) and "
    "short sentences by the split's other voices (the documents), half of them holding one of the words; "
    "`dev_truth.txt` / `test_truth.txt` list where. Scored by MTWV of per-layer DTW, the layer chosen on dev.",
    "sd": "Speaker diarization (SUPERB SD's form, 2 speakers per recording): three turns of two voices of the "
    "split, a short sentence each; the second voice starts at 30-70% of the first's speech (both trimmed of "
    "silence), and a third turn, by either voice (a coin), follows the second after a 0.1-0.4 s pause, so each "
    "recording has one-speaker parts, an overlap and a turn that only the voice attributes (cut at 5 s). "
    "Reference segments from the known clip "
    "boundaries in `train.rttm`, `dev.rttm`, `test.rttm`; dev and test voices are held-out variants "
    "(`speechft.data.synth_speakers`). Scored by frame-level DER.",
    "pr_de": "German phoneme recognition: CTC over a 42-phone German inventory (vowel length kept, stress "
    "stripped); targets are espeak-ng's IPA phoneme events for the German voice, mapped by "
    "`speechft.data.synth_text.ESPEAK_DE_TO_PHONE`. Utterances: sentences from a small German grammar "
    "(gender, case and adjective agreement over a fixed word list) and digit strings read as German "
    "number words. The new language of the continued pre-training scenario: its train audio is the "
    "new-language audio.",
}


def _task_spec(task: str, rows: dict[str, list[dict]]) -> dict:
    if task in PHONE_TASKS:
        inventory = T.INVENTORIES[PHONE_TASKS[task]][0]
        return {
            "name": f"synth_{task}",
            "type": "ctc",
            "metric": "per",
            "tokenizer": "space",
            "vocabulary": list(inventory),
        }
    if task == "asv":
        return {"name": "synth_asv", "type": "verification", "metric": "eer"}
    if task == "qbe":
        return {"name": "synth_qbe", "type": "qbe", "metric": "mtwv"}
    if task == "sd":
        return {"name": "synth_sd", "type": "diarization", "metric": "der", "speakers": 2}
    if task == "sf":
        return {
            "name": "synth_sf",
            "type": "ctc",
            "metric": "slot_type_f1",
            "tokenizer": "slots",
            "vocabulary": list(synth_slots.SF_VOCABULARY),
        }
    if task == "asr":
        # The whole alphabet, not just the letters this seed happened to use: the same head fits every seed.
        return {
            "name": "synth_asr",
            "type": "ctc",
            "metric": "cer",
            "tokenizer": "char",
            "vocabulary": ["|"] + [chr(c) for c in range(ord("a"), ord("z") + 1)],
        }
    labels = {
        "ks": list(T.KEYWORDS) + [T.UNKNOWN],
        "lid": list(LANGUAGES),
        "style": style_labels(),
        "sid": sorted({r["label"] for r in rows["train"]}),
    }[task]
    return {"name": f"synth_{task}", "type": "classification", "metric": "accuracy", "labels": labels}


def _task_readme(
    task: str,
    spec: dict,
    rows: dict[str, list[dict]],
    seed: int,
    size: str,
    engines: dict[str, str],
    variants: dict[str, list[str]],
    dropped: Counter,
) -> str:
    lines = [
        f"# synth_{task}",
        "",
        TASK_INFO[task],
        "",
        f"- generator: {GENERATOR_VERSION}; seed {seed}; size {size}",
        "- engines: " + "; ".join(f"{k} {v}" for k, v in sorted(engines.items())),
        f"- type {spec['type']}, metric {spec['metric']}, "
        + (
            f"{len(spec['labels'])} classes"
            if "labels" in spec
            else f"{len(spec['vocabulary'])} tokens ({spec['tokenizer']} tokenizer)"
            if "vocabulary" in spec
            else f"{len({r['label'] for r in rows['train']})} train speakers, trials in dev and test"
            if spec["type"] == "verification"
            else "2 speakers per recording, segments in {split}.rttm"
            if spec["type"] == "diarization"
            else f"{len(synth_speakers.QBE_TERMS)} spoken queries per split, no training"
        ),
        "",
        "| split | clips | hours | voices |",
        "|---|---|---|---|",
    ]
    for s in SPLITS:
        hours = sum(r["duration"] for r in rows[s]) / 3600
        lines.append(f"| {s} | {len(rows[s])} | {hours:.3f} | {len({r['speaker'] for r in rows[s]})} |")
    lines += ["", "## Voices per split", ""]
    for s in SPLITS:
        lines.append(f"- {s}: " + ", ".join(sorted({r["speaker"] for r in rows[s]})))
    if task != "sid":
        lines += ["", "espeak-ng voice variants by split (dev and test variants never speak in train):", ""]
        lines += [f"- {s}: " + ", ".join(v or "(base)" for v in variants[s]) for s in SPLITS]
    if "labels" in spec:
        counts = Counter(r["label"] for r in rows["train"])
        lines += ["", "## Train examples per class", "", ", ".join(f"{c} {counts[c]}" for c in spec["labels"])]
    if task in PHONE_TASKS and dropped:
        lines += [
            "",
            "espeak phoneme events with no inventory phone (dropped): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(dropped.items())),
        ]
    return "\n".join(lines) + "\n"


def _link(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def synthesize_benchmark(
    out,
    size: str = "small",
    seed: int = 0,
    tasks=None,
    overwrite: bool = False,
    cache_dir=None,
    engines=None,
    progress: bool = True,
) -> dict:
    """Generate the synthetic benchmark into `out` (one task folder per task); returns the summary.

    `engines`: None uses espeak-ng plus every optional engine installed (flite); a list
    such as ["espeak-ng"] pins them, which keeps a benchmark reproducible across machines.
    """
    chosen = check_args(size, seed, tasks)
    out = Path(out)
    cache_root_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    check_output_location(out, {"--cache-dir": cache_root_dir})
    if out.exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    cache = ClipCache(cache_root_dir)
    engines = load_engines(engines)
    versions = {name: eng.version for name, eng in engines.items()}
    voices = Voices(seed, engines)
    plan = make_plan(SIZES[size], seed, voices, chosen)

    results, todo = _cached_clips(plan, cache, versions)
    hits = len(results)
    t0 = time.time()
    _synthesize_missing(todo, results, cache, engines, len(plan.clips), f"synth {size}", progress)
    synth_seconds = time.time() - t0
    synth_speakers.mix_recordings(plan, results, cache, versions)  # sd: two clips per recording
    dropped = _fill_rows(plan, results)

    summary = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "size": size,
        "engines": versions,
        "variants": voices.variants,
        "tasks": {},
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for ref in sorted({r["_ref"] for splits in plan.rows.values() for s in SPLITS for r in splits[s]}):
            _link(results[ref][0], tmp / "audio" / f"{ref}.wav")
        for task in chosen:
            summary["tasks"][task] = _write_task(tmp, task, plan.rows[task], summary, dropped[task])
        write_json(tmp / "summary.json", summary)
        (tmp / "README.md").write_text(_top_readme(summary))
    return dict(
        summary,
        out=str(out),
        cache=str(cache.root),
        clips=len(plan.clips),
        cache_hits=hits,
        synth_seconds=round(synth_seconds, 2),
    )


def _cached_clips(plan: Plan, cache: ClipCache, versions: dict) -> tuple[dict[str, tuple[Path, dict]], list]:
    """The plan's clips already in the cache ({ref: (wav, meta)}) and the (ref, clip, key) still to make."""
    results, todo = {}, []
    for ref, clip in sorted(plan.clips.items()):
        key = clip.key(versions[clip.engine])
        got = cache.get(key)
        if got is None:
            todo.append((ref, clip, key))
        else:
            results[ref] = got
    return results, todo


def _synthesize_missing(todo: list, results: dict, cache: ClipCache, engines: dict, total: int, desc: str, progress):
    from ..progress import progress_bar

    with (
        progress_bar(total=total, initial=len(results), desc=desc, unit="clip", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        # Synthesis (in the engine's own process) overlaps with augmenting and writing the previous clips.
        pending: deque = deque()
        queue = iter(todo)

        def submit_next():
            item = next(queue, None)
            if item is not None:
                pending.append((item, pool.submit(engines[item[1].engine].synthesize, item[1])))

        for _ in range(4):
            submit_next()
        while pending:
            (ref, clip, key), future = pending.popleft()
            submit_next()
            audio, phonemes = future.result()
            if clip.aug:
                audio = augment(audio, dict(clip.aug))
            meta = {
                "samples": int(len(audio)),
                "phonemes": phonemes,
                "engine": clip.engine,
                "voice": clip.voice,
                "text": clip.text,
            }
            results[ref] = cache.put(key, audio, meta)
            bar.update()


def _fill_rows(plan: Plan, results: dict) -> dict[str, Counter]:
    """Durations (and phone transcripts) come from the clips themselves; returns the phone events dropped per task."""
    dropped: dict[str, Counter] = {task: Counter() for task in plan.rows}
    for task, splits in plan.rows.items():
        for s in SPLITS:
            for r in splits[s]:
                _, meta = results[r["_ref"]]
                r["duration"] = round(meta["samples"] / SAMPLE_RATE, 4)
                if task in PHONE_TASKS:
                    phones, unmapped = T.to_phones([p for p, _ in meta["phonemes"]], PHONE_TASKS[task])
                    dropped[task].update(unmapped)
                    if not phones:
                        raise SpeechFTError(f"synth: espeak gave no phonemes for {r['text']!r} ({r['speaker']})")
                    r["transcript"] = " ".join(phones)
    return dropped


def _write_task(tmp: Path, task: str, rows: dict[str, list[dict]], summary: dict, dropped: Counter) -> dict:
    """One task folder inside the benchmark being written; returns its entry of the summary."""
    spec = _task_spec(task, rows)
    group = next(r for s in SPLITS for r in rows[s])["_ref"].split("/")[0]
    clean = {s: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows[s]] for s in SPLITS}
    readme = _task_readme(
        task, spec, clean, summary["seed"], summary["size"], summary["engines"], summary["variants"], dropped
    )
    files = {"README.md": readme.encode()}
    if spec["type"] == "verification":
        for s in ("dev", "test"):
            files[f"{s}_trials.txt"] = synth_speakers.trial_lines(clean[s], summary["seed"], s).encode()
    if spec["type"] == "diarization":
        for s in SPLITS:
            files[f"{s}.rttm"] = synth_speakers.rttm_lines(rows[s]).encode()
    if spec["type"] == "qbe":
        for s in ("dev", "test"):
            files[f"{s}_truth.txt"] = synth_speakers.truth_lines(clean[s]).encode()
    write_task_folder(tmp / task, spec, clean, files=files, audio_dir=tmp / "audio" / group)
    return {
        "type": spec["type"],
        "metric": spec["metric"],
        "outputs": spec.get("speakers")
        or len(spec.get("labels") or spec.get("vocabulary") or {r.get("label") for r in clean["train"]}),
        "clips": {s: len(clean[s]) for s in SPLITS},
        "hours": {s: round(sum(r["duration"] for r in clean[s]) / 3600, 4) for s in SPLITS},
        "voices": {s: sorted({r["speaker"] for r in clean[s]}) for s in SPLITS},
    }


def _top_readme(summary: dict) -> str:
    lines = [
        "# Synthetic mini-SUPERB",
        "",
        "Generated by `speechft data synth` with speech synthesis (no recorded speech). "
        "Every task folder loads with `speechft.data.load_task`; each has its own README.md.",
        "",
        f"- generator: {summary['generator']}; seed {summary['seed']}; size {summary['size']}",
        "- engines: " + "; ".join(f"{k} {v}" for k, v in sorted(summary["engines"].items())),
        "",
        "| task | type | metric | classes/tokens | train | dev | test | hours (train/dev/test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, t in summary["tasks"].items():
        c, h = t["clips"], t["hours"]
        lines.append(
            f"| {task} | {t['type']} | {t['metric']} | {t['outputs']} | {c['train']} | {c['dev']} | "
            f"{c['test']} | {h['train']:.3f} / {h['dev']:.3f} / {h['test']:.3f} |"
        )
    total = sum(sum(t["hours"].values()) for t in summary["tasks"].values())
    lines.append(
        f"| all | | | | {sum(t['clips']['train'] for t in summary['tasks'].values())} | "
        f"{sum(t['clips']['dev'] for t in summary['tasks'].values())} | "
        f"{sum(t['clips']['test'] for t in summary['tasks'].values())} | {total:.3f} h in all |"
    )
    lines += [
        "",
        "pr and asr share their clips (counted in both rows): an encoder probed on every task runs over "
        "all the hours above.",
        "",
    ]
    lines += [
        "Held-out voice variants (dev/test of pr, asr, ks, lid, style, pr_de, sf, asv, qbe and sd never share a "
        "variant with train):",
        "",
    ]
    lines += [f"- {s}: " + ", ".join(v or "(base)" for v in summary["variants"][s]) for s in SPLITS]
    lines += [
        "",
        "sid and style are built so that random-weight features do not solve them "
        "(augmentation, different sentences per split); style is prosody, not emotion.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CLI
def add_arguments(parser):
    from ..cli import non_negative_int

    parser.add_argument("--out", required=True, help="folder to create (one task folder per task inside)")
    parser.add_argument(
        "--size",
        default="small",
        choices=list(SIZES),
        help="small: a few hundred clips, seconds (tests, quick demo); demo: ~0.8 h, the full "
        "demo on 2 cores; full: thousands of clips per task",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="fixes voices, sentences and augmentation")
    parser.add_argument(
        "--tasks", nargs="+", action="extend", metavar="TASK", help=f"a subset of {' '.join(TASKS)} (default: all)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="clip cache (default $SPEECHFT_CACHE/synth or ~/.cache/speechft/synth)"
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        action="extend",
        metavar="ENGINE",
        help=f"synthesisers from {' '.join(ENGINES)} (default: all installed)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_quiet_option(parser)


def main(args) -> int:
    t0 = time.time()
    s = synthesize_benchmark(
        args.out,
        size=args.size,
        seed=args.seed,
        tasks=args.tasks,
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        engines=args.engines,
        progress=not args.quiet,
    )
    print(f"{'task':6s} {'train':>6s} {'dev':>5s} {'test':>5s} {'hours':>7s}")
    for task, t in s["tasks"].items():
        print(
            f"{task:6s} {t['clips']['train']:6d} {t['clips']['dev']:5d} {t['clips']['test']:5d} "
            f"{sum(t['hours'].values()):7.3f}"
        )
    print(f"{s['clips']} clips ({s['cache_hits']} from the cache {s['cache']}) in {time.time() - t0:.1f} s")
    print(f"wrote {s['out']}")
    return 0
