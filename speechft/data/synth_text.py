"""What the synthetic benchmark says: sentences from a word-list grammar, keywords, digit
strings, and the phone inventories (English, German) that espeak-ng's IPA events are mapped onto.
The German task's grammar and inventory are in `synth_text_de`.

Everything here is a pure function of a `numpy.random.Generator`, so a benchmark seed
fixes every sentence; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

from .synth_text_de import ESPEAK_DE_TO_PHONE, PHONES_DE

# ---------------------------------------------------------------- sentence grammar
# Plain, common words (lower case a-z only, so the asr transcripts need no normalisation).
# None of them is a keyword, so ks "unknown" words can be drawn from here too.
NAMES = (
    "anna",
    "peter",
    "maria",
    "david",
    "laura",
    "james",
    "emma",
    "thomas",
    "sarah",
    "michael",
    "julia",
    "daniel",
    "olivia",
    "robert",
    "helen",
    "simon",
    "grace",
    "martin",
    "alice",
    "henry",
)
ADJECTIVES = (
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "new",
    "warm",
    "cold",
    "quiet",
    "heavy",
    "bright",
    "dark",
    "clean",
    "empty",
    "yellow",
    "little",
    "happy",
    "careful",
    "wooden",
    "broken",
    "golden",
    "simple",
    "famous",
    "strange",
    "gentle",
    "narrow",
    "sweet",
    "fresh",
    "tired",
    "thick",
    "thin",
    "usual",
    "noisy",
    "good",
)
NOUNS = (
    "house",
    "garden",
    "window",
    "table",
    "river",
    "letter",
    "basket",
    "kitchen",
    "doctor",
    "teacher",
    "farmer",
    "bottle",
    "picture",
    "mountain",
    "village",
    "bridge",
    "pencil",
    "carpet",
    "orange",
    "apple",
    "market",
    "station",
    "ticket",
    "jacket",
    "candle",
    "flower",
    "bucket",
    "button",
    "ladder",
    "pillow",
    "rabbit",
    "kitten",
    "tiger",
    "monkey",
    "wagon",
    "castle",
    "forest",
    "island",
    "painter",
    "sailor",
    "baker",
    "horse",
    "chair",
    "boat",
    "bread",
    "cheese",
    "coffee",
    "paper",
    "music",
    "story",
    # rarer English sounds, so every phone of the inventory occurs: ʒ ɔɪ θ ŋ ʊ
    "treasure",
    "television",
    "coin",
    "toy",
    "voice",
    "thumb",
    "mouth",
    "king",
    "ring",
    "book",
    "cookie",
)
VERBS_T = (
    "found",
    "painted",
    "carried",
    "moved",
    "opened",
    "cleaned",
    "bought",
    "sold",
    "watched",
    "liked",
    "wanted",
    "needed",
    "kept",
    "took",
    "brought",
    "held",
    "washed",
    "fixed",
    "dropped",
    "visited",
    "followed",
    "pushed",
    "pulled",
    "showed",
    "covered",
    "filled",
    "hid",
    "built",
    "drew",
    "asked",
)
VERBS_I = (
    "slept",
    "waited",
    "smiled",
    "laughed",
    "walked",
    "jumped",
    "sang",
    "danced",
    "arrived",
    "worked",
    "played",
    "rested",
    "listened",
    "whispered",
    "shouted",
    "cried",
    "stayed",
    "returned",
)
VERBS_BASE = (
    "bring",
    "carry",
    "open",
    "clean",
    "paint",
    "move",
    "find",
    "take",
    "hold",
    "wash",
    "fix",
    "show",
    "fill",
    "cover",
    "watch",
    "visit",
    "follow",
    "push",
    "pull",
    "keep",
)
ADVERBIALS = (
    "in the morning",
    "near the river",
    "after lunch",
    "at home",
    "on monday",
    "very slowly",
    "every day",
    "by the window",
    "in the garden",
    "before dinner",
    "at the station",
    "last night",
    "with a smile",
    "in the kitchen",
    "on the bridge",
    "at noon",
    "in the rain",
    "quite early",
    "without a word",
    "on sunday",
)
DETERMINERS = ("the", "a", "my", "your", "his", "her", "that", "this", "our")


def _noun_phrase(rng: np.random.Generator) -> str:
    det = DETERMINERS[rng.integers(len(DETERMINERS))]
    noun = NOUNS[rng.integers(len(NOUNS))]
    if rng.random() < 0.5:
        return (
            f"{det} {ADJECTIVES[rng.integers(len(ADJECTIVES))]} {noun}".replace("a a", "an a")
            .replace("a e", "an e")
            .replace("a o", "an o")
        )
    return f"{det} {noun}"


def _subject(rng: np.random.Generator) -> str:
    return NAMES[rng.integers(len(NAMES))] if rng.random() < 0.4 else _noun_phrase(rng)


def sentence(rng: np.random.Generator, max_words: int = 7) -> str:
    """One sentence of 3..`max_words` words, e.g. 'the old farmer carried a basket after lunch'."""
    while True:
        kind = rng.integers(4)
        if kind == 0:
            s = f"{_subject(rng)} {VERBS_T[rng.integers(len(VERBS_T))]} {_noun_phrase(rng)}"
        elif kind == 1:
            s = f"{_subject(rng)} {VERBS_I[rng.integers(len(VERBS_I))]} {ADVERBIALS[rng.integers(len(ADVERBIALS))]}"
        elif kind == 2:
            s = (
                f"{_subject(rng)} {VERBS_T[rng.integers(len(VERBS_T))]} {_noun_phrase(rng)} "
                f"{ADVERBIALS[rng.integers(len(ADVERBIALS))]}"
            )
        else:
            s = f"please {VERBS_BASE[rng.integers(len(VERBS_BASE))]} {_noun_phrase(rng)}"
        if 3 <= len(s.split()) <= max_words:
            return s


def sentences(rng: np.random.Generator, n: int, exclude: set[str] | None = None, max_words: int = 7) -> list[str]:
    """`n` distinct sentences, none of them in `exclude` (so splits never share a sentence)."""
    seen = set(exclude or ())
    out: list[str] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        s = sentence(rng, max_words)
        if s not in seen:
            seen.add(s)
            out.append(s)
    raise RuntimeError(f"the sentence grammar ran out of distinct sentences after {len(out)} of {n}")


# ---------------------------------------------------------------- keyword spotting
# Speech Commands' ten command words plus the ten digits, and an 'unknown' class.
KEYWORDS = (
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
UNKNOWN = "unknown"
# Words that sound like a keyword (or contain one) would be wrong 'unknown' examples.
_SOUNDS_LIKE_KEYWORD = {
    "to",
    "too",
    "for",
    "won",
    "ate",
    "know",
    "write",
    "of",
    "gone",
    "stopped",
    "upon",
    "nine",
    "none",
    "yet",
    "left",
    "right",
    "down",
    "go",
    "seven",
    "noon",
    "on",
}
UNKNOWN_WORDS = tuple(
    sorted(
        {
            w
            for w in NOUNS + ADJECTIVES + VERBS_T + VERBS_I + NAMES
            if w not in KEYWORDS and w not in _SOUNDS_LIKE_KEYWORD
        }
    )
)


# ---------------------------------------------------------------- language id
def digit_string(rng: np.random.Generator) -> str:
    """Digits espeak reads as number words in each language: 2-4 single digits ('4 7 1'), one
    number of 2-3 digits ('385'), or two of 1-2 digits ('12 7'). Short, so clips stay under ~3 s
    even in languages with long number words (Finnish, German)."""
    kind = int(rng.integers(3))
    if kind == 0:
        return " ".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(2, 5))))
    if kind == 1:
        return str(int(rng.integers(10, 1000)))
    return f"{int(rng.integers(0, 100))} {int(rng.integers(0, 100))}"


# ---------------------------------------------------------------- phone inventory
# A 39-phone English inventory in the spirit of the CMU/TIMIT folding (one symbol per
# phoneme, no stress), written in IPA. espeak-ng's en-us IPA events are mapped onto it;
# stress and length marks are stripped first.
PHONES = (
    "p",
    "b",
    "t",
    "d",
    "k",
    "ɡ",
    "tʃ",
    "dʒ",
    "f",
    "v",
    "θ",
    "ð",
    "s",
    "z",
    "ʃ",
    "ʒ",
    "h",
    "m",
    "n",
    "ŋ",
    "l",
    "ɹ",
    "w",
    "j",
    "i",
    "ɪ",
    "eɪ",
    "ɛ",
    "æ",
    "ɑ",
    "ʌ",
    "ɔ",
    "oʊ",
    "ʊ",
    "u",
    "ɝ",
    "aɪ",
    "aʊ",
    "ɔɪ",
    "ə",
)
# espeak-ng (en-us) spellings -> inventory phones. A value with spaces expands to several
# phones (r-coloured vowels); None drops the event (glottal stop).
ESPEAK_TO_PHONE: dict[str, str | None] = {
    "g": "ɡ",
    "r": "ɹ",
    "ɾ": "t",
    "ʔ": None,
    "x": "k",
    "ç": "h",
    "ɬ": "l",
    "n̩": "n",
    "l̩": "l",
    "m̩": "m",
    "ᵻ": "ɪ",
    "ɐ": "ə",
    "ɚ": "ɝ",
    "ɜ": "ɝ",
    "əl": "ə l",
    "ɑɹ": "ɑ ɹ",
    "ɔɹ": "ɔ ɹ",
    "oɹ": "ɔ ɹ",
    "ɛɹ": "ɛ ɹ",
    "ɪɹ": "ɪ ɹ",
    "ʊɹ": "ʊ ɹ",
    "aɪɚ": "aɪ ɝ",
    "aɪə": "aɪ ə",
    "aʊɚ": "aʊ ɝ",
    "iə": "i ə",
    "e": "eɪ",
    "o": "oʊ",
    "a": "æ",
    "ɒ": "ɑ",
    "ɜɹ": "ɝ",
    "əʊ": "oʊ",
    "eə": "ɛ ɹ",
    "ɐɪ": "aɪ",
    "ɑɪ": "aɪ",
    "ɑʊ": "aʊ",
    "ɔø": "ɔɪ",
    "y": "u",
    "ɯ": "u",
    "ɵ": "oʊ",
    "ɘ": "ə",
    "ɨ": "ɪ",
    "ɑ̃": "ɑ n",
    "ʍ": "w",
    "ɫ": "l",
    "ʁ": "ɹ",
    # British, Scottish and Caribbean accents (en-gb-x-rp, en-gb-scotland, en-029, ...)
    "aa": "ɑ",
    "a:": "ɑ",
    "ʌʉ": "aʊ",
    "ɑə": "ɑ",
    "ɔə": "ɔ",
    "oə": "ɔ",
    "ʉɹ": "ʊ ɹ",
    "ʉ": "u",
    "ʌɹ": "ɝ",
    "ʲ": "j",
    "ɐʊ": "aʊ",
    "ɛə": "ɛ",
    "ʊə": "ʊ",
    "ɪə": "ɪ",
    "əɹ": "ɝ",
    "t̪": "t",
    "əɪ": "aɪ",
    "æʊ": "aʊ",
    "əu": "oʊ",
    "ʌʊ": "oʊ",
    "ei": "eɪ",
    "oɪ": "ɔɪ",
}


def strip_suprasegmentals(ipa: str, keep_length: bool = False) -> str:
    drop = "ˈˌ-" if keep_length else "ˈˌːˑ-"
    return "".join(c for c in ipa if c not in drop)


def to_phones(ipa_events: list[str], language: str = "en") -> tuple[list[str], list[str]]:
    """Map espeak IPA phoneme names to the `language` inventory ('en': PHONES, 'de': PHONES_DE).
    Returns (phones, names it could not map)."""
    if language not in INVENTORIES:
        raise ValueError(f"no phone inventory for language '{language}'; have {', '.join(INVENTORIES)}")
    inventory, mapping, keep_length = INVENTORIES[language]
    phones, unmapped = [], []
    for raw in ipa_events:
        p = strip_suprasegmentals(raw, keep_length)
        if not p:
            continue
        if p in inventory:
            phones.append(p)
            continue
        mapped = mapping.get(p, "?")
        if mapped == "?" and language == "de" and len(p) > 1 and p.endswith("ɐ"):
            # espeak writes vowel + vocalised r as one event ('ʊɐ' in 'kurz'): two phones.
            head = p[:-1] if p[:-1] in inventory else mapping.get(p[:-1], "?")
            mapped = "?" if head in ("?", None) else f"{head} ɐ"
        if mapped is None:
            continue
        if mapped == "?" or any(m not in inventory for m in mapped.split()):
            unmapped.append(raw)
            continue
        phones.extend(mapped.split())
    return phones, unmapped


# language -> (inventory, espeak-to-inventory map, keep vowel length marks)
INVENTORIES = {"en": (PHONES, ESPEAK_TO_PHONE, False), "de": (PHONES_DE, ESPEAK_DE_TO_PHONE, True)}
