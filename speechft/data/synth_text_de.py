"""What the German task (pr_de) of the synthetic benchmark says: the new-language task of the continued
pre-training scenario. German sentences from a small grammar with gender, case and adjective agreement,
plus digit strings (read as German number words), and the German phone inventory that espeak-ng's `de`
IPA events are mapped onto (`synth_text.to_phones(..., "de")`).

Nouns, names and sentence starts are capitalised as German spells them; espeak does not care, the
README and the `text` column show proper German. Like `synth_text`, everything is a pure function of a
`numpy.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DE_NAMES = (
    "Anna",
    "Peter",
    "Maria",
    "Lukas",
    "Jonas",
    "Lena",
    "Paul",
    "Sophie",
    "Felix",
    "Klara",
    "Max",
    "Emma",
    "Ben",
    "Mia",
    "Leon",
    "Hanna",
    "Tobias",
    "Greta",
    "Moritz",
    "Julia",
)
# noun -> grammatical gender (m, f, n); no weak masculine nouns (der Bär, den Bären), whose
# accusative the simple declension below would get wrong.
DE_NOUNS = {
    "Hund": "m",
    "Vogel": "m",
    "Baum": "m",
    "Tisch": "m",
    "Stuhl": "m",
    "Apfel": "m",
    "Zug": "m",
    "Bäcker": "m",
    "Lehrer": "m",
    "Garten": "m",
    "Schlüssel": "m",
    "Brief": "m",
    "Käse": "m",
    "Wagen": "m",
    "Fisch": "m",
    "Koch": "m",
    "Ball": "m",
    "Teller": "m",
    "Schrank": "m",
    "Löffel": "m",
    "Kuchen": "m",
    "Kopf": "m",
    "Topf": "m",
    "König": "m",
    "Käfer": "m",
    "Rock": "m",
    "Onkel": "m",
    "Katze": "f",
    "Blume": "f",
    "Tür": "f",
    "Lampe": "f",
    "Straße": "f",
    "Schule": "f",
    "Brücke": "f",
    "Tasche": "f",
    "Uhr": "f",
    "Frau": "f",
    "Kirche": "f",
    "Wolke": "f",
    "Zeitung": "f",
    "Flasche": "f",
    "Küche": "f",
    "Maus": "f",
    "Jacke": "f",
    "Säge": "f",
    "Pfanne": "f",
    "Sonne": "f",
    "Wolle": "f",
    "Haus": "n",
    "Buch": "n",
    "Fenster": "n",
    "Brot": "n",
    "Kind": "n",
    "Pferd": "n",
    "Auto": "n",
    "Bild": "n",
    "Glas": "n",
    "Boot": "n",
    "Dorf": "n",
    "Mädchen": "n",
    "Zimmer": "n",
    "Feuer": "n",
    "Geschenk": "n",
    "Schiff": "n",
    "Rad": "n",
    "Heft": "n",
    "Spielzeug": "n",
    "Gemüse": "n",
    "Öl": "n",
    "Hähnchen": "n",
}
DE_ADJECTIVES = (
    "alt",
    "neu",
    "klein",
    "groß",
    "rot",
    "blau",
    "grün",
    "warm",
    "kalt",
    "schön",
    "leise",
    "schwer",
    "hell",
    "leer",
    "gelb",
    "müde",
    "frisch",
    "schnell",
    "lang",
    "kurz",
    "weiß",
    "schwarz",
    "braun",
    "süß",
    "still",
    "nass",
    "klug",
    "fremd",
    "bunt",
    "jung",
    "freundlich",
    "ruhig",
    "böse",
)
DE_VERBS_T = (
    "sah",
    "fand",
    "kaufte",
    "trug",
    "malte",
    "öffnete",
    "suchte",
    "holte",
    "brachte",
    "baute",
    "wusch",
    "hielt",
    "zeigte",
    "nahm",
    "füllte",
    "verkaufte",
    "besuchte",
    "vergaß",
    "putzte",
    "schob",
    "zog",
)
DE_VERBS_I = (
    "schlief",
    "wartete",
    "lachte",
    "lief",
    "sang",
    "tanzte",
    "arbeitete",
    "spielte",
    "schwieg",
    "kam",
    "ging",
    "weinte",
    "rief",
    "schwamm",
    "fuhr",
    "blieb",
)
DE_IMPERATIVES = ("nimm", "bring", "hol", "öffne", "zeig", "such", "wasch", "kauf", "mal", "trag", "schieb", "zieh")
DE_ADVERBIALS = (
    "am Morgen",
    "im Garten",
    "am Montag",
    "nach dem Essen",
    "vor der Schule",
    "in der Küche",
    "auf der Brücke",
    "heute Abend",
    "sehr langsam",
    "jeden Tag",
    "am Fenster",
    "im Regen",
    "gestern",
    "in der Nacht",
    "am Sonntag",
    "ohne ein Wort",
    "um zwölf Uhr",
    "hinter dem Haus",
    "im Winter",
    "zu Hause",
    "mit Freude",
    "ganz früh",
    "spät am Abend",
)
_DE_NOUN_LIST = tuple(sorted(DE_NOUNS))
# Articles by case and gender, and the adjective endings that go with them: weak after the
# definite article (der alte Hund, den alten Hund), mixed after ein/eine (ein alter Hund).
_DE_ARTICLES = {
    "def": {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"}},
    "indef": {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"}},
}
_DE_ENDINGS = {
    "def": {"nom": {"m": "e", "f": "e", "n": "e"}, "acc": {"m": "en", "f": "e", "n": "e"}},
    "indef": {"nom": {"m": "er", "f": "e", "n": "es"}, "acc": {"m": "en", "f": "e", "n": "es"}},
}


def de_adjective(stem: str, ending: str) -> str:
    """'alt' + 'en' -> 'alten'; stems ending in -e take the ending without its e ('müde' -> 'müden')."""
    return stem + (ending[1:] if stem.endswith("e") else ending)


def de_noun_phrase(rng: np.random.Generator, case: str) -> str:
    """'der alte Hund' (nom) / 'einen alten Hund' (acc), agreeing in gender and case."""
    noun = _DE_NOUN_LIST[rng.integers(len(_DE_NOUN_LIST))]
    gender = DE_NOUNS[noun]
    kind = "def" if rng.random() < 0.6 else "indef"
    det = _DE_ARTICLES[kind][case][gender]
    if rng.random() < 0.5:
        adj = de_adjective(DE_ADJECTIVES[rng.integers(len(DE_ADJECTIVES))], _DE_ENDINGS[kind][case][gender])
        return f"{det} {adj} {noun}"
    return f"{det} {noun}"


def de_sentence(rng: np.random.Generator, max_words: int = 6) -> str:
    """One German sentence of 3..`max_words` words, e.g. 'Greta fand einen alten Schlüssel'."""
    while True:
        kind = rng.integers(4)
        subject = DE_NAMES[rng.integers(len(DE_NAMES))] if rng.random() < 0.4 else de_noun_phrase(rng, "nom")
        if kind == 0:
            s = f"{subject} {DE_VERBS_T[rng.integers(len(DE_VERBS_T))]} {de_noun_phrase(rng, 'acc')}"
        elif kind == 1:
            s = (
                f"{subject} {DE_VERBS_I[rng.integers(len(DE_VERBS_I))]} "
                f"{DE_ADVERBIALS[rng.integers(len(DE_ADVERBIALS))]}"
            )
        elif kind == 2:  # German puts the time/place adverbial before the object: 'Anna sah am Morgen den Hund'
            s = (
                f"{subject} {DE_VERBS_T[rng.integers(len(DE_VERBS_T))]} "
                f"{DE_ADVERBIALS[rng.integers(len(DE_ADVERBIALS))]} {de_noun_phrase(rng, 'acc')}"
            )
        else:
            s = f"bitte {DE_IMPERATIVES[rng.integers(len(DE_IMPERATIVES))]} {de_noun_phrase(rng, 'acc')}"
        if 3 <= len(s.split()) <= max_words:
            return s[0].upper() + s[1:]


DE_DIGIT_FRACTION = 0.25  # of pr_de utterances: digit strings read as German number words


def de_utterances(
    rng: np.random.Generator,
    n: int,
    digit_string: Callable[[np.random.Generator], str],
    exclude: set[str] | None = None,
) -> list[str]:
    """`n` distinct German utterances (sentences, and digit strings from `digit_string`: synth_text's,
    shared with lid), none in `exclude`."""

    seen = set(exclude or ())
    out: list[str] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        s = digit_string(rng) if rng.random() < DE_DIGIT_FRACTION else de_sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    raise RuntimeError(f"the German grammar ran out of distinct utterances after {len(out)} of {n}")


# A 42-phone German inventory (one symbol per phoneme, stress stripped, vowel length kept:
# it is phonemic in German - Staat/Stadt, Miete/Mitte). espeak-ng's `de` IPA events map onto it.
PHONES_DE = (
    "p",
    "b",
    "t",
    "d",
    "k",
    "ɡ",
    "pf",
    "ts",
    "f",
    "v",
    "s",
    "z",
    "ʃ",
    "ç",
    "x",
    "h",
    "m",
    "n",
    "ŋ",
    "l",
    "r",
    "j",
    "iː",
    "ɪ",
    "yː",
    "ʏ",
    "eː",
    "ɛ",
    "ɛː",
    "øː",
    "œ",
    "ə",
    "ɐ",
    "aː",
    "a",
    "oː",
    "ɔ",
    "uː",
    "ʊ",
    "aɪ",
    "aʊ",
    "ɔʏ",
)
ESPEAK_DE_TO_PHONE: dict[str, str | None] = {
    "ɾ": "r",
    "ʁ": "r",
    "ʀ": "r",
    "ɹ": "r",
    "g": "ɡ",
    "ɜ": "ɐ",
    "ɑː": "aː",
    "ɑ": "a",
    "aa": "aː",
    "a:": "aː",
    "ɔø": "ɔʏ",
    "ɔy": "ɔʏ",
    "l̩": "ə l",
    "n̩": "ə n",
    "m̩": "ə m",
    "ʔ": None,
    "ʒ": "ʃ",
    "dʒ": "t ʃ",
    "tʃ": "t ʃ",
    "e": "eː",
    "o": "oː",
    "i": "iː",
    "u": "uː",
    "y": "yː",
    "ø": "øː",
    "ɛ̃": "ɛ ŋ",
    "ɔ̃": "ɔ ŋ",
    "ɑ̃": "a ŋ",
    "ɒ": "ɔ",
    "æ": "ɛ",
    "w": "v",
    "θ": "s",
    "ð": "z",
    "ɫ": "l",
}
