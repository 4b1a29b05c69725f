"""The espeak-ng driver and the synthetic mini-SUPERB (`speechft data synth`).

The small benchmark is generated once per session (espeak-ng only, so the result does not
depend on which optional engines a machine has) into a tmp folder with a tmp cache.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from speechft.data import espeak, load_audio, load_task, synth
from speechft.data import synth_text as T
from speechft.data import synth_text_de as DE
from speechft.errors import SpeechFTError

CONTENT_TASKS = ("pr", "asr", "ks", "lid", "style", "pr_de", "sf", "asv")


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synth_cache")


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory, synth_cache):
    out = tmp_path_factory.mktemp("bench") / "small"
    summary = synth.synthesize_benchmark(
        out, size="small", seed=0, cache_dir=synth_cache, engines=["espeak-ng"], progress=False
    )
    return out, summary


def fingerprint(root: Path, tasks) -> dict:
    """Manifest bytes and the sha256 of every audio file each manifest names."""
    fp = {}
    for task in tasks:
        t = load_task(root / task)
        fp[task] = {
            s: (t.manifest_hash(s), [(e.id, hashlib.sha256(e.path.read_bytes()).hexdigest()) for e in t.splits[s]])
            for s in ("train", "dev", "test")
        }
        fp[task]["task.yaml"] = (root / task / "task.yaml").read_bytes()
    return fp


def variant(voice: str) -> str:
    return voice.split("+", 1)[1] if "+" in voice else ""


# ------------------------------------------------------------------ espeak driver
def test_espeak_gives_16k_audio_and_monotonic_phoneme_onsets():
    r = espeak.synthesize("turn left at the old bridge", voice="en-us+f3")
    assert r.sample_rate == 16000 and r.audio.dtype == np.float32 and r.audio.ndim == 1
    assert 0.8 < r.duration < 3.0 and 0.01 < np.abs(r.audio).max() <= 1.0
    onsets = [t for _, t in r.phonemes]
    assert len(onsets) >= 15
    assert all(b >= a for a, b in zip(onsets, onsets[1:])), onsets
    assert 0 <= onsets[0] and onsets[-1] < r.duration
    phones, unmapped = T.to_phones([p for p, _ in r.phonemes])
    assert unmapped == []
    assert phones[:4] == ["t", "ɝ", "n", "l"]


def test_espeak_phonemes_follow_the_words():
    assert T.to_phones([p for p, _ in espeak.synthesize("yes", voice="en-us").phonemes])[0] == ["j", "ɛ", "s"]
    assert T.to_phones([p for p, _ in espeak.synthesize("stop", voice="en-us").phonemes])[0] == ["s", "t", "ɑ", "p"]


def test_german_phonemes_map_onto_the_german_inventory():
    def de(word):
        return T.to_phones([p for p, _ in espeak.synthesize(word, voice="de").phonemes], "de")

    assert de("Schnee") == (["ʃ", "n", "eː"], [])  # vowel length kept: it is phonemic in German
    assert de("Pferd") == (["pf", "eː", "r", "t"], [])  # affricate, and r from espeak's ɾ
    assert de("kurz") == (["k", "ʊ", "ɐ", "ts"], [])  # vowel + vocalised r split into two phones
    assert de("Rätsel") == (["r", "ɛː", "ts", "ə", "l"], [])  # syllabic l -> ə l
    assert de("zwölf")[0] == ["ts", "v", "œ", "l", "f"]
    assert set(DE.PHONES_DE).isdisjoint({"ˈ", "ˌ"}) and len(set(DE.PHONES_DE)) == len(DE.PHONES_DE)
    with pytest.raises(ValueError, match="inventory"):
        T.to_phones(["a"], "xx")


def test_german_grammar_agrees_in_gender_and_case():
    rng = np.random.default_rng(0)
    articles = {
        ("acc", "m"): {"den", "einen"},
        ("acc", "f"): {"die", "eine"},
        ("acc", "n"): {"das", "ein"},
        ("nom", "m"): {"der", "ein"},
        ("nom", "f"): {"die", "eine"},
        ("nom", "n"): {"das", "ein"},
    }
    for case in ("nom", "acc"):
        for _ in range(300):
            words = DE.de_noun_phrase(rng, case).split()
            gender = DE.DE_NOUNS[words[-1]]
            assert words[0] in articles[(case, gender)], words
            if len(words) == 3:  # article + adjective + noun: weak ending after der/die/das, mixed after ein
                ending = {
                    "der": "e",
                    "die": "e",
                    "das": "e",
                    "den": "en",
                    "eine": "e",
                    "einen": "en",
                    "ein": "er" if gender == "m" else "es",
                }[words[0]]
                assert words[1] in {DE.de_adjective(a, ending) for a in DE.DE_ADJECTIVES}, words
    texts = DE.de_utterances(np.random.default_rng(1), 200, T.digit_string)
    assert len(set(texts)) == 200
    digits = [t for t in texts if t.replace(" ", "").isdigit()]
    assert 20 <= len(digits) <= 80  # about a quarter are digit strings, the rest sentences
    assert all(t[0].isupper() and 3 <= len(t.split()) <= 6 for t in texts if t not in digits)


def test_espeak_is_deterministic_whatever_came_before():
    # libespeak-ng carries state between utterances; the forked worker must hide that.
    a = espeak.synthesize("hello world, turn left now", voice="en-us+klatt", rate=160, pitch=40).audio
    espeak.synthesize("Guten Tag, ich bin 47 Jahre alt", voice="de+croak")
    espeak.synthesize("a completely different sentence", voice="en-us+klatt")
    b = espeak.synthesize("hello world, turn left now", voice="en-us+klatt", rate=160, pitch=40).audio
    assert np.array_equal(a, b)


def test_espeak_rate_and_pitch_change_the_audio():
    base = espeak.synthesize("seven", voice="en-us", rate=175, pitch=50)
    slow = espeak.synthesize("seven", voice="en-us", rate=100, pitch=50)
    high = espeak.synthesize("seven", voice="en-us", rate=175, pitch=90)
    assert slow.duration > 1.3 * base.duration
    assert not np.array_equal(high.audio[: len(base.audio)], base.audio[: len(high.audio)])


def test_refused_voice_and_bad_parameters_raise_one_line_errors():
    with pytest.raises(SpeechFTError, match="en-sc.*refused"):
        espeak.synthesize("hello", voice="en-sc")
    with pytest.raises(SpeechFTError, match="rate"):
        espeak.synthesize("hello", rate=1000)
    with pytest.raises(SpeechFTError, match="pitch"):
        espeak.synthesize("hello", pitch=-1)
    with pytest.raises(SpeechFTError, match="non-empty"):
        espeak.synthesize("   ")
    # the worker survives a refusal
    assert espeak.synthesize("hello").duration > 0.2


def test_a_dead_worker_is_restarted():
    espeak.synthesize("one")
    proc = espeak._worker.proc
    proc.kill()
    proc.wait()
    assert espeak.synthesize("two").duration > 0.2
    assert espeak._worker.proc.pid != proc.pid


def test_list_voices_has_languages_and_variants():
    langs = {v.languages[0] for v in espeak.list_voices() if v.languages}
    assert {"en-us", "de", "es"} <= langs and any(x.startswith("fr") for x in langs)
    variants = espeak.variant_names()
    assert {"f3", "m3", "klatt"} <= set(variants)
    assert espeak.check_voice("en-us+f3") and not espeak.check_voice("en-gb+m3")


# ------------------------------------------------------------------ augmentation
def test_augment_is_seeded_and_hits_the_requested_snr():
    rng = np.random.default_rng(0)
    wav = (0.5 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32)
    spec = {"snr": (10.0, 10.0), "seed": 3}
    a, b = synth.augment(wav, spec), synth.augment(wav, spec)
    assert np.array_equal(a, b)
    noise = a.astype(np.float64) - wav
    snr = 10 * np.log10(np.mean(wav.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 10.0) < 0.5
    assert not np.array_equal(a, synth.augment(wav, dict(spec, seed=4)))
    cropped = synth.augment(wav + 0 * rng.standard_normal(32000).astype(np.float32), {"crop": (1.0, 1.5), "seed": 1})
    assert 16000 <= len(cropped) <= 24000
    padded = synth.augment(wav[:8000], {"pad_to": 1.0, "peak": (0.5, 0.5), "seed": 2})
    assert len(padded) == 16000 and abs(np.abs(padded).max() - 0.5) < 1e-4


# ------------------------------------------------------------------ the benchmark
def test_every_task_folder_loads_with_audio_that_matches_the_manifest(small_bench):
    out, summary = small_bench
    assert sorted(p.name for p in out.iterdir() if (p / "task.yaml").exists()) == sorted(synth.TASKS)
    assert (out / "README.md").exists() and (out / "summary.json").exists()
    for task in synth.TASKS:
        t = load_task(out / task)
        assert (out / task / "README.md").read_text().startswith(f"# synth_{task}")
        for split in ("train", "dev", "test"):
            assert len(t.splits[split]) == summary["tasks"][task]["clips"][split]
            if t.type == "qbe" and split == "train":
                continue  # query by example trains nothing
            assert t.splits[split]
            for e in t.splits[split]:
                if t.type == "classification" or t.type == "ctc" or split == "train":  # else: trials, no labels
                    t.encode(e.target)  # every label / token is in the vocabulary
            e = t.splits[split][0]
            wav = load_audio(e.path)
            assert abs(len(wav) / 16000 - e.duration) < 1e-3
        longest = max(e.duration for s in t.splits.values() for e in s)
        cap = {"sid": 2.5, "asv": 2.5, "sd": 5.0}.get(task, 3.6)  # sd: three turns, cut at MAX_MIX_SECONDS
        assert longest <= cap, (task, longest)


def test_labels_and_vocabularies(small_bench):
    out, _ = small_bench
    pr = load_task(out / "pr")
    assert pr.type == "ctc" and pr.tokenizer == "space" and pr.metric == "per"
    assert 38 <= len(pr.labels) <= 42 and pr.labels == list(T.PHONES)
    used = {p for e in pr.splits["train"] for p in pr.tokens(e.target)}
    assert len(used) >= 30
    asr = load_task(out / "asr")
    assert asr.tokenizer == "char" and asr.metric == "cer" and asr.labels == ["|"] + list("abcdefghijklmnopqrstuvwxyz")
    assert [e.target for e in asr.splits["test"]] == [e.extra["text"] for e in pr.splits["test"]]
    assert [e.path.resolve() for e in asr.splits["test"]] == [e.path.resolve() for e in pr.splits["test"]]

    ks = load_task(out / "ks")
    assert len(ks.labels) == 21 and "unknown" in ks.labels and set(T.KEYWORDS) <= set(ks.labels)
    assert {e.target for e in ks.splits["train"]} == set(ks.labels)
    unknown_words = {e.extra["text"] for e in ks.splits["train"] if e.target == "unknown"}
    assert unknown_words and not unknown_words & set(T.KEYWORDS)
    assert len({(e.extra["rate"], e.extra["pitch"]) for e in ks.splits["train"]}) >= 5

    sid = load_task(out / "sid")
    assert len(sid.labels) >= 20
    for split in ("train", "test"):
        assert {e.target for e in sid.splits[split]} == set(sid.labels)
    texts = {s: {e.extra["text"] for e in sid.splits[s]} for s in ("train", "dev", "test")}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"]

    pr_de = load_task(out / "pr_de")
    assert pr_de.type == "ctc" and pr_de.tokenizer == "space" and pr_de.metric == "per"
    assert pr_de.name == "synth_pr_de" and pr_de.labels == list(DE.PHONES_DE) and 38 <= len(pr_de.labels) <= 46
    used_de = {p for e in pr_de.splits["train"] for p in pr_de.tokens(e.target)}
    assert len(used_de) >= 36 and {"ç", "x", "ts", "yː", "ʏ", "ɐ", "øː"} <= used_de, sorted(used_de)
    assert {"ç", "x", "pf", "yː", "ɐ"} <= set(pr_de.labels) - set(pr.labels)  # German phones, not pr's inventory
    de_texts = [e.extra["text"] for s in ("train", "dev", "test") for e in pr_de.splits[s]]
    assert any(t.replace(" ", "").isdigit() for t in de_texts) and any(" " in t and t[0].isupper() for t in de_texts)
    assert all(e.speaker.split("+")[0] == "de" for s in pr_de.splits.values() for e in s)
    assert not {e.extra["text"] for e in pr_de.splits["train"]} & {e.extra["text"] for e in pr_de.splits["test"]}
    assert "espeak phoneme events with no inventory phone" not in (out / "pr_de" / "README.md").read_text()

    lid = load_task(out / "lid")
    assert len(lid.labels) >= 8 and {e.target for e in lid.splits["test"]} == set(lid.labels)
    assert all(e.extra["text"].replace(" ", "").isdigit() for e in lid.splits["train"])

    sf = load_task(out / "sf")
    assert sf.type == "ctc" and sf.tokenizer == "slots" and sf.metric == "slot_type_f1"
    from speechft.probe_sf import plain_text, slots

    for split in ("train", "dev", "test"):
        for e in sf.splits[split]:
            assert plain_text(e.target) == e.extra["text"] and slots(e.target), e.target
    kinds = {k for e in sf.splits["train"] for k in slots(e.target)}
    assert kinds == {"time", "city", "day", "artist", "genre"}
    assert not {e.extra["text"] for e in sf.splits["train"]} & {e.extra["text"] for e in sf.splits["test"]}

    asv = load_task(out / "asv")
    assert asv.type == "verification" and asv.metric == "eer" and len(asv.labels) == 24
    for split in ("dev", "test"):
        clips = asv.split(split)
        n = len(clips)
        assert len(asv.trials[split]) == n * (n - 1) // 2  # every pair (small sizes)
        for a, b, same in asv.trials[split]:
            assert same == (clips[a].speaker == clips[b].speaker)
        assert sum(s for _, _, s in asv.trials[split]) == len({e.speaker for e in clips}) * 3  # C(3, 2) per voice
    assert not {e.speaker for e in asv.split("dev")} & {e.speaker for e in asv.split("test")}

    qbe = load_task(out / "qbe")
    assert qbe.type == "qbe" and qbe.split("train") == []
    for split in ("dev", "test"):
        clips = qbe.split(split)
        queries = [e for e in clips if e.target == "query"]
        assert len({e.speaker for e in queries}) == 1 and len(queries) == 10
        assert queries[0].speaker not in {e.speaker for e in clips if e.target == "document"}
        hits = [(clips[q], clips[d]) for q, d, o in qbe.trials[split] if o]
        assert len(hits) == 10 and all(q.extra["text"] in d.extra["text"].split() for q, d in hits)

    style = load_task(out / "style")
    assert len(style.labels) == 9 and not any("emotion" in x for x in style.labels)
    fast = [int(e.extra["rate"]) for e in style.splits["train"] if e.target.startswith("fast")]
    slow = [int(e.extra["rate"]) for e in style.splits["train"] if e.target.startswith("slow")]
    assert min(fast) > max(slow)


def test_held_out_voices_never_speak_in_training(small_bench):
    out, summary = small_bench
    for task in CONTENT_TASKS:
        t = load_task(out / task)
        train = {e.speaker for e in t.splits["train"]}
        for split in ("dev", "test"):
            held = {e.speaker for e in t.splits[split]}
            assert held and not held & train, (task, split)
            # not even the same voice variant with another accent or language
            assert not {variant(v) for v in held} & {variant(v) for v in train}, (task, split)
    v = summary["variants"]
    assert not set(v["test"]) & set(v["train"]) and not set(v["dev"]) & set(v["train"])


def test_diarization_recordings_overlap_two_held_out_voices(small_bench):
    out, _ = small_bench
    sd = load_task(out / "sd")
    assert sd.type == "diarization" and sd.metric == "der" and len(sd.split("train")) == 40
    train = {v for e in sd.split("train") for v in e.speaker.split(",")}
    last_turn_by = set()
    for split in ("train", "dev", "test"):
        for e, segs in zip(sd.split(split), sd.segments[split]):
            voices = e.speaker.split(",")
            assert len(set(voices)) == 2 and [s for _, _, s in segs[:2]] == voices
            (a0, a1, _), (b0, b1, _) = segs[:2]
            # a one-speaker start, then the second voice joins while the first still speaks
            assert a0 == 0.0 and 0.0 < b0 < a1
            if len(segs) == 3:  # the third turn (unless the 5 s cut took it): after a pause, by either voice
                c0, c1, c = segs[2]
                assert b1 + 0.1 - 1e-3 <= c0 < c1 and c in voices
                last_turn_by.add(voices.index(c))
            assert max(end for _, end, _ in segs) <= e.duration + 1e-3
        if split != "train":
            held = {v for e in sd.split(split) for v in e.speaker.split(",")}
            assert not held & train and not {variant(v) for v in held} & {variant(v) for v in train}
    assert last_turn_by == {0, 1}  # the first voice comes back in some recordings, the second goes on in others


def test_same_seed_is_byte_identical_with_a_fresh_cache(small_bench, tmp_path):
    out, _ = small_bench
    again = tmp_path / "again"
    s = synth.synthesize_benchmark(
        again,
        size="small",
        seed=0,
        tasks=["ks", "lid", "pr_de"],
        cache_dir=tmp_path / "cache",
        engines=["espeak-ng"],
        progress=False,
    )
    assert s["cache_hits"] == 0  # everything synthesised anew, in another order than the first run
    assert fingerprint(again, ["ks", "lid", "pr_de"]) == fingerprint(out, ["ks", "lid", "pr_de"])


def test_another_seed_gives_another_benchmark(small_bench, synth_cache, tmp_path):
    out, _ = small_bench
    other = tmp_path / "seed1"
    synth.synthesize_benchmark(
        other, size="small", seed=1, tasks=["lid"], cache_dir=synth_cache, engines=["espeak-ng"], progress=False
    )
    a, b = fingerprint(out, ["lid"])["lid"], fingerprint(other, ["lid"])["lid"]
    for split in ("train", "dev", "test"):
        assert a[split][0] != b[split][0]
        assert not {h for _, h in a[split][1]} & {h for _, h in b[split][1]}


def test_killed_run_leaves_no_folder_and_resumes_from_the_cache(small_bench, tmp_path, monkeypatch):
    out, _ = small_bench
    cache = tmp_path / "cache"
    calls = {"n": 0}
    real = synth.augment

    def dies_after_20(wav, aug, sr=16000):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return real(wav, aug, sr)

    monkeypatch.setattr(synth, "augment", dies_after_20)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize_benchmark(
            tmp_path / "b", tasks=["style"], cache_dir=cache, engines=["espeak-ng"], progress=False
        )
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temp folder left either
    monkeypatch.setattr(synth, "augment", real)
    s = synth.synthesize_benchmark(
        tmp_path / "b", tasks=["style"], cache_dir=cache, engines=["espeak-ng"], progress=False
    )
    assert s["cache_hits"] == 20
    assert fingerprint(tmp_path / "b", ["style"]) == fingerprint(out, ["style"])
    # a rerun reuses every clip
    s = synth.synthesize_benchmark(
        tmp_path / "b", tasks=["style"], cache_dir=cache, engines=["espeak-ng"], progress=False, overwrite=True
    )
    assert s["cache_hits"] == s["clips"]


def test_demo_size_is_accepted_and_between_small_and_full():
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    assert parser.parse_args(["--out", "x", "--size", "demo"]).size == "demo"
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--size", "huge"])
    # planned only (nothing synthesised): dev and test big enough to measure on
    sizes = {n: synth.planned_examples(n) for n in ("small", "demo", "full")}
    demo = sizes["demo"]
    assert set(demo) == set(synth.TASKS)
    for task, splits in demo.items():
        for split in ("train", "dev", "test") if task != "qbe" else ("dev", "test"):  # qbe: no train
            n = [len(sizes[k][task][split]) for k in ("small", "demo", "full")]
            assert n[0] < n[1] < n[2], (task, split, n)
            assert len(splits[split]) >= 40, (task, split)
    assert len(demo["pr_de"]["train"]) >= 100 and len(demo["pr"]["dev"]) >= 40
    # ~1 h (0.8 h before sf, asv and qbe; sd adds 128 short recordings; style's dev and test grew by 135 clips so
    # the demo's target has a small spread): the demo runs its encoders over the tasks it makes
    assert sum(len(r) for t in demo.values() for r in t.values()) < 2900


def test_bad_requests_raise_speechft_errors(small_bench, tmp_path):
    out, _ = small_bench
    with pytest.raises(SpeechFTError, match="size"):
        synth.synthesize_benchmark(tmp_path / "x", size="huge")
    with pytest.raises(SpeechFTError, match="unknown task"):
        synth.synthesize_benchmark(tmp_path / "x", tasks=["pr", "emotion"])
    with pytest.raises(SpeechFTError, match="already exists"):
        synth.synthesize_benchmark(out, tasks=["ks"])
    with pytest.raises(SpeechFTError, match="seed"):
        synth.synthesize_benchmark(tmp_path / "x", seed=-1)
    with pytest.raises(SpeechFTError, match="engines"):
        synth.synthesize_benchmark(tmp_path / "x", engines=["festival"])


def test_cli_writes_the_folder_and_says_where(small_bench, synth_cache, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    argv = ["--out", str(tmp_path / "cli"), "--tasks", "style", "lid", "--cache-dir", str(synth_cache)]
    args = parser.parse_args(argv + ["--engines", "espeak-ng", "--quiet"])
    assert args.tasks == ["style", "lid"] and args.engines == ["espeak-ng"]
    assert parser.parse_args(["--out", "x", "--tasks", "ks", "--tasks", "sid"]).tasks == ["ks", "sid"]  # extends
    assert parser.parse_args(["--out", "x"]).tasks is None  # every task
    assert synth.main(args) == 0
    printed = capsys.readouterr()
    assert f"wrote {tmp_path / 'cli'}" in printed.out and "style" in printed.out
    assert "synth small" not in printed.err  # --quiet: no progress bar
    assert load_task(tmp_path / "cli" / "style").num_outputs == 9
    assert sorted(p.name for p in (tmp_path / "cli").iterdir() if p.is_dir()) == ["audio", "lid", "style"]


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is optional (apt install flite)")
def test_flite_engine_when_installed():
    from speechft.data import engines

    (flite,) = engines.available_engines(["flite"])
    assert set(flite.voices()) <= set(engines.Flite.VOICES) and flite.voices()
    clip = synth.Clip("flite", flite.voices()[0], "turn left now", rate=175, pitch=50)
    a, phones = flite.synthesize(clip)
    b, _ = flite.synthesize(clip)
    assert a.dtype == np.float32 and 0.5 < len(a) / 16000 < 3 and np.array_equal(a, b)
    assert [p for p, _ in phones] == ["t", "ɝ", "n", "l", "ɛ", "f", "t", "n", "aʊ"]
    slow, _ = flite.synthesize(synth.Clip("flite", flite.voices()[0], "turn left now", rate=100, pitch=50))
    assert len(slow) > 1.3 * len(a)
