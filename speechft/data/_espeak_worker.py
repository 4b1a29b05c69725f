"""The espeak-ng worker process behind `speechft.data.espeak` (stdlib only; run as a script).

Why a separate process that forks once per utterance: libespeak-ng keeps synthesis state
between calls in static variables (the pitch-flutter phase, the Klatt and breath
resonators, the echo buffer, ...) that neither `espeak_Terminate` nor re-initialising
resets, so the same (voice, text, rate, pitch) gives slightly different samples - even a
few samples' difference in length - depending on what was synthesised before. This
worker initialises the library once and then forks a child per request: every child
starts from the same pristine memory, so every clip is a pure function of its request
and a cache keyed by it is exact. A fork of this small process costs about a millisecond.

It runs as a plain script (`python _espeak_worker.py LIB DATA`), not as a package module,
so it never imports speechft, numpy or torch.

Protocol on stdin/stdout, every message framed as u32 length + bytes:
    request  JSON {"op": "synth", "voice", "text", "rate", "pitch"} | {"op": "voices", "spec"}
    response JSON header {"ok", "error"?, ...}, then for "synth" one more frame of int16 PCM.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA | espeakINITIALIZE_DONT_EXIT
INIT_OPTIONS = 0x0001 | 0x0002 | 0x8000
EVENT_END_OF_LIST, EVENT_WORD, EVENT_PHONEME = 0, 1, 7
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
POS_CHARACTER, CHARS_UTF8 = 1, 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT (speak_lib.h)
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):  # espeak_VOICE (speak_lib.h)
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _read_frame(f) -> bytes | None:
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    data = f.read(n)
    if len(data) < n:
        return None
    return data


def _frame(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


class Library:
    def __init__(self, lib_path: str, data_path: str):
        self.lib = ctypes.CDLL(lib_path)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self.lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        self.lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INIT_OPTIONS)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data at {data_path}")
        self.pcm: list[bytes] = []
        self.phonemes: list[tuple[str, int]] = []
        self._callback = _CALLBACK(self._on_audio)  # keep a reference: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.rand_seed = getattr(self.lib, "espeak_ng_SetRandSeed", None)
        if self.rand_seed is not None:
            self.rand_seed.argtypes = [ctypes.c_long]
        # Load English (phoneme tables + dictionary) before any fork: children inherit it, and a child
        # speaking an English voice skips reading the dictionary (about 12 ms of the ~28 ms per clip).
        # Part of the pristine state, so part of what every clip is a function of.
        self.lib.espeak_SetVoiceByName(b"en-us")

    def version(self) -> str:
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Info.argtypes = [ctypes.c_void_p]
        return (self.lib.espeak_Info(None) or b"unknown").decode("utf-8", "replace")

    def _on_audio(self, wav, n, events):
        if n > 0:
            self.pcm.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while events[i].type != EVENT_END_OF_LIST:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                self.phonemes.append((ev.id.string.decode("utf-8", "replace"), int(ev.sample)))
            i += 1
        return 0

    def synth(self, voice: str, text: str, rate: int, pitch: int) -> tuple[dict, bytes]:
        rc = self.lib.espeak_SetVoiceByName(voice.encode())
        if rc != 0:
            return {"ok": False, "error": f"voice '{voice}' refused by espeak-ng (status {rc})", "kind": "voice"}, b""
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch)):
            rc = self.lib.espeak_SetParameter(param, int(value), 0)
            if rc != 0:
                return {"ok": False, "error": f"espeak_SetParameter({param}, {value}) failed (status {rc})"}, b""
        if self.rand_seed is not None:
            self.rand_seed(0)
        self.pcm, self.phonemes = [], []
        data = text.encode("utf-8") + b"\0"
        rc = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        rc = rc or self.lib.espeak_Synchronize()
        if rc != 0:
            return {"ok": False, "error": f"espeak_Synth failed (status {rc}) on text {text[:40]!r}"}, b""
        return {"ok": True, "sample_rate": self.sample_rate, "phonemes": self.phonemes}, b"".join(self.pcm)

    def voices(self, spec: str | None) -> dict:
        if spec:
            query = _Voice()
            query.languages = spec.encode()
            arr = self.lib.espeak_ListVoices(ctypes.byref(query))
        else:
            arr = self.lib.espeak_ListVoices(None)
        out, i = [], 0
        while arr and arr[i]:
            v = arr[i].contents
            # `languages` is (priority byte, NUL-terminated code) pairs, but libespeak-ng 1.52 does not
            # always write the list's terminating 0 (the buffer is reused), so trust only the first pair.
            raw = ctypes.string_at(v.languages, 64) if v.languages else b""
            langs = [raw[1 : raw.index(b"\0", 1)].decode("utf-8", "replace")] if len(raw) > 1 and raw[0] else []
            out.append(
                {
                    "name": (v.name or b"").decode("utf-8", "replace"),
                    "identifier": (v.identifier or b"").decode("utf-8", "replace"),
                    "languages": langs,
                    "gender": int(v.gender),
                }
            )
            i += 1
        return {"ok": True, "voices": out}


def _serve_synth_in_child(lib: Library, req: dict) -> tuple[dict, bytes]:
    """Fork; the child synthesises from pristine state and pipes the answer back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            head, pcm = lib.synth(req["voice"], req["text"], req["rate"], req["pitch"])
            payload = _frame(json.dumps(head).encode()) + _frame(pcm)
            with os.fdopen(w, "wb") as f:
                f.write(payload)
            code = 0
        except BaseException:
            code = 3
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        head, pcm = _read_frame(f), _read_frame(f)
    _, status = os.waitpid(pid, 0)
    if status != 0 or head is None or pcm is None:
        return {
            "ok": False,
            "error": f"espeak-ng crashed synthesising voice '{req['voice']}' "
            f"text {req['text'][:40]!r} (wait status {status})",
        }, b""
    return json.loads(head), pcm


def main(argv: list[str]) -> int:
    lib_path, data_path = argv[1], argv[2]
    lib = Library(lib_path, data_path)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    can_fork = hasattr(os, "fork")
    while True:
        raw = _read_frame(stdin)
        if raw is None:
            return 0
        req = json.loads(raw)
        if req["op"] == "synth":
            head, pcm = (
                _serve_synth_in_child(lib, req)
                if can_fork
                else lib.synth(req["voice"], req["text"], req["rate"], req["pitch"])
            )
            stdout.write(_frame(json.dumps(head).encode()) + _frame(pcm))
        elif req["op"] == "voices":
            stdout.write(_frame(json.dumps(lib.voices(req.get("spec"))).encode()))
        elif req["op"] == "hello":
            stdout.write(
                _frame(
                    json.dumps(
                        {"ok": True, "sample_rate": lib.sample_rate, "version": lib.version(), "isolated": can_fork}
                    ).encode()
                )
            )
        else:
            stdout.write(_frame(json.dumps({"ok": False, "error": f"unknown op {req['op']!r}"}).encode()))
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
