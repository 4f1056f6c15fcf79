"""Which prompts the English features can read, decided before any parse.

The eight router features come from an English spaCy pipeline, an English word-frequency
list and an English concreteness lexicon. On text they cannot read they do not fail, they
mislead: every token of a Japanese or Russian prompt is "rare", a French prompt parses as
a run of proper nouns, and the weighted sum says little about how hard the prompt is. So
the router does not score such prompts from features; it gives them the profile's
deliberate route (``RouterProfile.unreadable_quantile``, heavy by default).

A prompt is *unreadable* when

- it has no letters at all (emoji, digits, punctuation only): ``"no-letters"``;
- fewer than half of its letters are Latin script: ``"non-latin"``;
- it is Latin script but reads as another language: at least ``MIN_FOREIGN`` of its words
  are function words of French, German, Spanish, Italian, Portuguese or Dutch that
  English does not use (``FOREIGN_FUNCTION_WORDS``), and they outnumber its English stop
  words (spaCy's list): ``"non-english"``. Artist names ("alphonse mucha", "de chirico")
  do not trip it, because English function words ("a", "of", "by", "in") dominate any
  English prompt. A short foreign prompt with fewer than two such words ("un chien",
  "el gato negro") reads as English: a known limit of a rule without a language model.

Everything here is plain Python over strings (cheap: a few microseconds a prompt).
"""

from __future__ import annotations

import re
from functools import lru_cache

READABLE = ""
NO_LETTERS = "no-letters"
NON_LATIN = "non-latin"
NON_ENGLISH = "non-english"

MIN_LATIN_SHARE = 0.5
MIN_FOREIGN = 2

_LETTER = re.compile(r"[^\W\d_]")
# Basic Latin, Latin-1 and Extended-A/B, IPA, Latin Extended Additional, fullwidth Latin.
_LATIN = re.compile(
    r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02af\u1e00-\u1eff\uff21-\uff3a\uff41-\uff5a]"
)
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


# Function words of French, German, Spanish, Italian, Portuguese and Dutch that English
# prompts do not use: each language's 60 most frequent words in ``wordfreq`` (3.1), less
# English's 3,000 most frequent words, spaCy's English stop words, one-letter words and
# two-letter words that are English abbreviations or names ("ai", "mi", "yo", "tu", ...);
# plus "un la el en los sul nel", which are frequent in English text only as names. On the
# 10,000 reference prompts (ImageNet captions, DiffusionDB) no prompt reads as foreign.
FOREIGN_FUNCTION_WORDS = frozenset("""
aan aber alla als anche ao así até au auch auf aus aux avec años bei bem bien bij ce
cette che com comme como con cosa cuando cui dal dann dans das dass dat dei del della
delle dem den der des deze di dia dit dos du een ein eine einem einen einer el ela ele
elle en entre eso essere est esta este está faire fait foi fue für geen gli haar habe
haben hanno hay heb hebben heeft het hij ich il ils isso ist jaar já kan kann kunnen la
las le les los maar mais mas meer mesmo meu mijn mit moet muito muy más même na naar
nach nel nella nicht niet noch nog nos nous nur não oder ook op os ou par para pas pela
pelo pero pessoas più pode por porque pour puede qu quando que questa questo qui qué sa
schon ser seu sich sie sin sind sobre sono sont stato sua sul sur sus são só también
também tem ter tiene todo todos tot tout tra tutti tutto uit um uma un una und une vai
veel você von voor vous wat wel wenn werden wie wir wird worden wordt zijn zu zum ça
être über
""".split())


@lru_cache(maxsize=1)
def _english_stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


def unreadable_reason(text: str) -> str:
    """``""`` when the English features can read ``text``, else why not (see module doc)."""
    letters = len(_LETTER.findall(text))
    if letters == 0:
        return NO_LETTERS
    if len(_LATIN.findall(text)) < MIN_LATIN_SHARE * letters:
        return NON_LATIN
    english, foreign = _english_stop_words(), FOREIGN_FUNCTION_WORDS
    n_en = n_foreign = 0
    for word in _WORD.findall(text.lower()):
        if word in english:
            n_en += 1
        elif word in foreign:
            n_foreign += 1
    if n_foreign >= MIN_FOREIGN and n_foreign > n_en:
        return NON_ENGLISH
    return READABLE
