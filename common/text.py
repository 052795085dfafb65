"""Caption text as the scorer sees it: one clean line. Shared by the label checks and the caption metrics,
so a label that passes validation is exactly a label the scorer can use."""
from __future__ import annotations

import re
import unicodedata

# The decoder prefix of every caption: the task is said in words, as in the original.
PRETRAIN_PROMPT = "Motion Description : "
FINETUNE_PROMPT = "Motion Instruction : "

_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PIPES = re.compile(r"\|{3,}")


def sanitize_caption(text: str) -> str:
    """One clean line: control characters, line/paragraph separators and any Unicode space become ' ',
    invisible format characters (zero-width space, soft hyphen, BOM) are removed, runs of 3+ '|'
    (METEOR's ``|||`` separator) become ' ', whitespace is collapsed and stripped. May return ''."""
    if not isinstance(text, str):
        raise TypeError(f"sanitize_caption expects str, got {type(text).__name__}")
    if text.isascii():
        text = _ASCII_CONTROL.sub(" ", text)
    else:
        out = []
        for ch in text:
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cs", "Zl", "Zp", "Zs"):
                out.append(" ")
            elif cat != "Cf":
                out.append(ch)
        text = "".join(out)
    text = _PIPES.sub(" ", text)
    return " ".join(text.split())
