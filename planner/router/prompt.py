"""One validation function for prompt text, so no bad input reaches spaCy.

Limits (documented in the README):
- at most ``READ_CHARS`` characters are read, so a 100,000-character prompt costs no more
  than a long one, and at most ``MAX_PROMPT_CHARS`` are kept *after* NFC normalisation
  (which can turn one character into three);
- at most ``MAX_TOKENS`` spaCy tokens are parsed: diffusion text encoders (CLIP) see
  77 tokens, so words past that do not reach the model either.
"""

from __future__ import annotations

import re
import unicodedata

MAX_PROMPT_CHARS = 2000
READ_CHARS = 4 * MAX_PROMPT_CHARS  # enough input to fill MAX_PROMPT_CHARS after cleaning
MAX_TOKENS = 77

# C0/C1 controls (tab, newline and CR become spaces), zero-width and bidi controls, BOM.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_SPACES = re.compile(r"\s+")


def validate_prompt(prompt: object) -> str:
    """Return the cleaned prompt text, or raise ``ValueError`` saying what is wrong."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    text = prompt[:READ_CHARS]
    # Lone surrogates (from bad JSON escapes) cannot be encoded: make them visible '?'.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = unicodedata.normalize("NFC", text)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()[:MAX_PROMPT_CHARS].rstrip()
    if not text:
        raise ValueError("prompt is empty (nothing left after removing whitespace and controls)")
    return text
