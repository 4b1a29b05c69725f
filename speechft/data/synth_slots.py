"""The synthetic slot-filling task (`sf`): spoken commands with slot values, tagged as SUPERB SF tags them.

Audio SNIPS (SUPERB's SF corpus) is itself synthesised speech of assistant commands; this is a small
stand-in in its spirit: three domains (alarms, weather, music), four templates each, and slot values
drawn from fixed lists (so nothing is downloaded). The templates share carrier words across slot sets
("set an alarm for {time}" / "... {time} {day}"; "play some {genre} music" / "play some {genre} by
{artist}"), so an utterance's slot types are told by its words: with two templates per domain and five
slot sets, slot-type F1 was a guess of the template that length and rhythm answered, and random weights
beat the real encoder on it (benchmarks/README.md). A transcript marks each value `B-type ... E-type`
(data/tasks.py, tokenizer `slots`); espeak-ng reads the plain text. Dev and test are spoken by held-out
voice variants (synth_plan.Voices), and no utterance is spoken in two splits.
"""

from __future__ import annotations

import numpy as np

HOURS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
MINUTES = ("", "fifteen", "thirty", "forty five")
CITIES = (
    "paris", "london", "new york", "tokyo", "berlin", "madrid", "oslo", "cairo",
    "lima", "sydney", "rome", "dublin", "boston", "denver", "mumbai", "toronto",
)  # fmt: skip
DAYS = ("today", "tomorrow", "tonight", "on monday", "on friday", "on sunday", "this weekend", "next week")
ARTISTS = (
    "the beatles", "abba", "queen", "madonna", "adele", "coldplay", "nirvana",
    "elvis", "bob marley", "prince", "shakira", "eminem", "bjork", "the doors",
)  # fmt: skip
GENRES = ("jazz", "rock", "classical", "pop", "blues", "reggae", "country", "techno", "soul", "folk")

# template -> slots in order; "{}" is a slot value
TEMPLATES = (
    ("set an alarm for {}", ("time",)),
    ("set an alarm for {} {}", ("time", "day")),
    ("wake me up at {} {}", ("time", "day")),
    ("remind me {} at {}", ("day", "time")),
    ("what is the weather in {}", ("city",)),
    ("what is the weather {}", ("day",)),
    ("will it rain in {} {}", ("city", "day")),
    ("will it rain in {} at {}", ("city", "time")),
    ("play a song by {}", ("artist",)),
    ("play some {} music", ("genre",)),
    ("play some {} by {}", ("genre", "artist")),
    ("play some {} music {}", ("genre", "day")),
)
SLOT_TYPES = ("time", "city", "day", "artist", "genre")
# The whole alphabet and every marker, not just what this seed used: the same head fits every seed.
SF_VOCABULARY = (
    ["|"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"{b}-{t}" for t in SLOT_TYPES for b in ("B", "E")]
)


def _values(kind: str) -> list[str]:
    if kind == "time":
        return [f"{h} {m}".strip() for h in HOURS for m in MINUTES]
    return list({"city": CITIES, "day": DAYS, "artist": ARTISTS, "genre": GENRES}[kind])


def all_utterances() -> list[tuple[str, str]]:
    """Every (plain text for the synthesiser, tagged transcript) the templates make, in a fixed order."""
    import itertools

    out = []
    for template, kinds in TEMPLATES:
        for values in itertools.product(*(_values(k) for k in kinds)):
            plain = template.format(*values)
            out.append((plain, template.format(*(f"B-{k} {v} E-{k}" for k, v in zip(kinds, values)))))
    return out


def utterances(rng: np.random.Generator, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    """n distinct utterances, drawn without replacement, none of whose plain texts is in `exclude`."""
    pool = [u for u in all_utterances() if u[0] not in exclude]
    if n > len(pool):
        raise ValueError(f"synth sf: {n} utterances asked for, the templates have {len(pool)} left")
    return [pool[i] for i in rng.permutation(len(pool))[:n]]
