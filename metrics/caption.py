"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr; optional SPICE and BERTScore).

Computed exactly as the COCO caption toolkit (``pycocoevalcap`` 1.2) does: every caption and reference
is lower-cased and split by the Stanford PTB tokenizer (Java), punctuation tokens are dropped, then
``Bleu(4)``, ``Meteor()``, ``Rouge()`` and ``Cider()`` score each clip's prediction against *all* its
references. Values are reported on the 0-100 scale used in papers (every metric multiplied by 100,
CIDEr included: a toolkit CIDEr of 0.341 is reported as 34.1). The Java processes (start-up check, PTB
tokenizer, METEOR) and their timeouts live in ``metrics.java``.

Measured behaviour of pycocoevalcap 1.2 this module guards against:

* A caption containing a newline makes METEOR raise and then hang on its lock. ``|||`` is METEOR's field
  separator. Any line terminator Java knows (``\\r``, ``\\v``, ``\\f``, U+0085, U+2028, U+2029) makes the
  PTB tokenizer emit extra lines, silently shifting every later caption onto the wrong clip id.
  ``sanitize_caption`` removes all of these before anything reaches Java.
* ``Bleu.compute_score`` prints to stdout unless ``verbose=0``; it is called with ``verbose=0``.
* Empty captions are safe: an empty prediction scores 0 for that clip on every metric (PTB keeps the empty
  line, METEOR accepts an empty hypothesis).
* A reference with no letter or digit left after PTB tokenization (empty, or punctuation only: "..." comes
  back empty, "!!" comes back as the token "!!") would match an equally empty or punctuation-only
  prediction perfectly (BLEU-1, METEOR and ROUGE-L 100 for that clip) and halves that clip's CIDEr
  otherwise: such references are dropped, and a clip with no other reference is a ``UserError`` naming it.
* CIDEr's IDF comes from the references of the evaluated set, so CIDEr is only comparable on the same set
  (with a single clip it is always 0).
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from common.errors import UserError, sample_names
from common.text import sanitize_caption
from metrics.java import (JAVA_MISSING_MESSAGE, JAVA_START_TIMEOUT_S, METEOR_TIMEOUT_S, PTB_TIMEOUT_S,
                          SPICE_TIMEOUT_S, ScoringError, check_java_starts, close_meteor, meteor_score, ptb_tokenize,
                          require_java, spice_score)

# Names other modules import from here; they live in metrics.java (and common.text) now.
__all__ = ["METRIC_KEYS", "SPICE_KEY", "BERTSCORE_KEY", "CaptionScorer", "ScoringError", "JAVA_MISSING_MESSAGE",
           "JAVA_START_TIMEOUT_S", "PTB_TIMEOUT_S", "METEOR_TIMEOUT_S", "SPICE_TIMEOUT_S", "close_meteor", "sanitize_caption"]

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
SPICE_KEY = "SPICE"
BERTSCORE_KEY = "BERTScore"

_BERTSCORE_MODEL = "roberta-large"  # what bert_score uses for lang="en"


# ---- input checks --------------------------------------------------------------------------------

def _check_inputs(predictions: Mapping, references: Mapping) -> list:
    """Validate shapes and ids; return the clip ids in a fixed (sorted) order."""
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise UserError("caption metrics need dicts: predictions {clip_id: caption} and "
                        "references {clip_id: [caption, ...]}")
    if not predictions:
        raise UserError("no predictions to score (empty predictions dict)")
    pred_ids, ref_ids = set(predictions), set(references)
    if pred_ids != ref_ids:
        missing = ref_ids - pred_ids
        extra = pred_ids - ref_ids
        parts = []
        if missing:
            parts.append(f"{len(missing)} clip id(s) have references but no prediction: {sample_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} predicted clip id(s) have no references: {sample_names(extra)}")
        raise UserError(f"prediction and reference clip ids differ ({len(pred_ids)} predictions, "
                        f"{len(ref_ids)} references): " + "; ".join(parts))
    for clip_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise UserError(f"prediction for clip {clip_id!r} must be a string, got {type(caption).__name__}")
    for clip_id, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise UserError(f"references for clip {clip_id!r} must be a list of strings, "
                            f"got {type(refs).__name__}")
        for r in refs:
            if not isinstance(r, str):
                raise UserError(f"a reference of clip {clip_id!r} is {type(r).__name__}, expected a string")
    return sorted(pred_ids, key=str)


def _has_word(tokens: str) -> bool:
    return any(ch.isalnum() for ch in tokens)


def _usable_references(ids: list, refs: list[list[str]], ref_tokens: list[str]) -> tuple[dict, list[list[str]]]:
    """({clip id: [tokenized reference, ...]}, [[sanitised reference, ...] per clip]) without the references
    that have no word after PTB tokenization; a clip left with none is a UserError naming it."""
    gts, kept, pos = {}, [], 0
    for clip_id, clip_refs in zip(ids, refs):
        pairs = [(r, t) for r, t in zip(clip_refs, ref_tokens[pos:pos + len(clip_refs)]) if _has_word(t)]
        pos += len(clip_refs)
        if not pairs:
            raise UserError(f"clip {clip_id!r} has no usable reference caption (every reference is empty or "
                            "punctuation only)")
        kept.append([r for r, _ in pairs])
        gts[clip_id] = [t for _, t in pairs]
    return gts, kept


def _positive_seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise UserError(f"CaptionScorer {name}={value!r}: expected a positive number of seconds")
    return float(value)


# ---- optional metrics: availability checks -------------------------------------------------------

def _spice_dir() -> str:
    import pycocoevalcap.spice as spice_pkg

    return os.path.dirname(os.path.abspath(spice_pkg.__file__))


def _check_spice() -> None:
    from pycocoevalcap.spice import get_stanford_models as gsm

    lib = os.path.join(_spice_dir(), gsm.SPICELIB)
    missing = [f for f in (f"{gsm.JAR}.jar", f"{gsm.JAR}-models.jar") if not os.path.isfile(os.path.join(lib, f))]
    if missing:
        raise UserError(
            f"SPICE needs Stanford CoreNLP jars that are not installed ({', '.join(missing)} missing in {lib}); "
            "pycocoevalcap would download them at first use - extract "
            f"{gsm.JAR}.jar and {gsm.JAR}-models.jar from http://nlp.stanford.edu/software/{gsm.CORENLP}.zip "
            "into that folder, or run without SPICE")
    if not os.access(_spice_dir(), os.W_OK):
        raise UserError(f"SPICE writes its tmp/ and cache/ folders inside {_spice_dir()}, which is not "
                        "writable; install pycocoevalcap in a writable venv or run without SPICE")


def _check_bertscore() -> None:
    try:
        import bert_score  # noqa: F401
    except ImportError as e:
        raise UserError("BERTScore needs the `bert_score` package (pip install bert-score==0.3.13) and "
                        f"the `{_BERTSCORE_MODEL}` weights; or run without BERTScore") from e
    try:
        from huggingface_hub import try_to_load_from_cache

        def cached(name):
            return isinstance(try_to_load_from_cache(_BERTSCORE_MODEL, name), str)

        ok = cached("config.json") and cached("vocab.json") and (
            cached("model.safetensors") or cached("pytorch_model.bin"))
    except Exception:  # noqa: BLE001 - any failure here means "not available offline"
        ok = False
    if not ok:
        raise UserError(f"BERTScore needs the `{_BERTSCORE_MODEL}` weights in the Hugging Face cache "
                        "(not found offline); download them once with `python -c \"from transformers import "
                        f"AutoModel, AutoTokenizer; AutoModel.from_pretrained('{_BERTSCORE_MODEL}'); "
                        f"AutoTokenizer.from_pretrained('{_BERTSCORE_MODEL}')\"`, or run without BERTScore")


# ---- public scorer -------------------------------------------------------------------------------

class CaptionScorer:
    """Corpus-level COCO caption metrics on the 0-100 scale (each toolkit value x 100, CIDEr included).

    ``score(predictions, references)`` takes ``{clip_id: caption}`` and ``{clip_id: [reference, ...]}`` with
    identical id sets and returns ``{key: float}`` for ``self.keys``: ``METRIC_KEYS`` (without "METEOR" when
    ``meteor=False``), plus "SPICE" / "BERTScore" when enabled. BERTScore is the mean F1 of
    ``bert_score.score(lang="en", rescale_with_baseline=True, idf=True)`` (roberta-large, as in TM2T) on the
    sanitised, untokenised captions with all usable references of a clip. Deterministic for the same inputs.

    Construction starts a JVM once, so a Java that is missing or cannot start fails here, before any work.
    The timeouts (seconds) bound the start-up check, each PTB tokenizer run, each METEOR call and each SPICE
    run. Problems the user can fix (ids mismatch, optional metric unavailable) raise ``UserError``; Java that
    is missing, cannot start, times out or crashes raises its subclass ``ScoringError``.
    """

    def __init__(self, meteor: bool = True, spice: bool = False, bertscore: bool = False, *,
                 java_start_timeout_s: float = JAVA_START_TIMEOUT_S, ptb_timeout_s: float = PTB_TIMEOUT_S,
                 meteor_timeout_s: float = METEOR_TIMEOUT_S, spice_timeout_s: float = SPICE_TIMEOUT_S):
        self.meteor = bool(meteor)
        self.spice = bool(spice)
        self.bertscore = bool(bertscore)
        self.ptb_timeout_s = _positive_seconds("ptb_timeout_s", ptb_timeout_s)
        self.meteor_timeout_s = _positive_seconds("meteor_timeout_s", meteor_timeout_s)
        self.spice_timeout_s = _positive_seconds("spice_timeout_s", spice_timeout_s)
        check_java_starts(_positive_seconds("java_start_timeout_s", java_start_timeout_s))
        if self.spice:
            _check_spice()
        if self.bertscore:
            _check_bertscore()

    @property
    def keys(self) -> tuple[str, ...]:
        keys = tuple(k for k in METRIC_KEYS if self.meteor or k != "METEOR")
        return keys + ((SPICE_KEY,) if self.spice else ()) + ((BERTSCORE_KEY,) if self.bertscore else ())

    def _tokenized(self, predictions: dict[str, str], references: dict[str, list[str]]):
        """(sanitised predictions, usable references, {id: [reference tokens]}, {id: [prediction tokens]})."""
        require_java()
        ids = _check_inputs(predictions, references)
        preds = [sanitize_caption(predictions[i]) for i in ids]
        refs = [[c for c in (sanitize_caption(r) for r in references[i]) if c] for i in ids]
        tokens = ptb_tokenize(preds + [r for rs in refs for r in rs], self.ptb_timeout_s)
        res = {i: [tokens[k]] for k, i in enumerate(ids)}
        gts, refs = _usable_references(ids, refs, tokens[len(ids):])
        return preds, refs, gts, res

    def per_clip_cider(self, predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
        """Each clip's CIDEr (0-100 scale) with the document frequencies of the whole set, as in `score`."""
        from pycocoevalcap.cider.cider import Cider

        _, _, gts, res = self._tokenized(predictions, references)
        _, scores = Cider().compute_score(gts, res)
        return {i: 100.0 * float(v) for i, v in zip(gts, scores)}

    def score(self, predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        preds, refs, gts, res = self._tokenized(predictions, references)

        out: dict[str, float] = {}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            out[f"BLEU-{n + 1}"] = 100.0 * float(bleu[n])
        if self.meteor:
            out["METEOR"] = 100.0 * meteor_score(gts, res, self.meteor_timeout_s)
        out["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        out["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
        if self.spice:
            out[SPICE_KEY] = 100.0 * self._spice(gts, res)
        if self.bertscore:
            out[BERTSCORE_KEY] = 100.0 * self._bertscore(preds, refs)
        return {k: out[k] for k in self.keys}

    def _spice(self, gts: dict, res: dict) -> float:
        _check_spice()  # the CoreNLP jars must be there: never let SPICE start a download
        return spice_score(gts, res, self.spice_timeout_s)

    @staticmethod
    def _bertscore(preds: list[str], refs: list[list[str]]) -> float:
        from bert_score import score as bert_score

        _, _, f1 = bert_score(preds, refs, lang="en", rescale_with_baseline=True, idf=True, verbose=False)
        return float(f1.mean())
