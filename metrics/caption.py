"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr; optional SPICE and BERTScore) — design §6.

Computed exactly as the COCO caption toolkit (``pycocoevalcap`` 1.2) does: every caption and reference
is lower-cased and split by the Stanford PTB tokenizer (Java), punctuation tokens are dropped, then
``Bleu(4)``, ``Meteor()``, ``Rouge()`` and ``Cider()`` score each clip's prediction against *all* its
references. Values are reported on the 0-100 scale used in papers (every metric multiplied by 100,
CIDEr included: a toolkit CIDEr of 0.341 is reported as 34.1).

Measured behaviour of pycocoevalcap 1.2 this module guards against:

* A caption containing a newline makes METEOR raise and then hang forever on its lock (the raise leaves
  the lock held; the next call or the object's ``__del__`` at exit blocks). ``|||`` is METEOR's field
  separator. Any line terminator Java knows (``\\r``, ``\\v``, ``\\f``, U+0085, U+2028, U+2029) makes the
  PTB tokenizer emit extra lines, silently shifting every later caption onto the wrong clip id.
  ``sanitize_caption`` removes all of these before anything reaches Java.
* The PTB tokenizer writes its temp file inside the installed package folder (fails on a read-only
  install) and logs to stderr; this module runs the same jar with the same flags on a temp file in the
  system temp dir (``TMPDIR``), with stderr captured, and checks that one line comes back per caption.
* ``Bleu.compute_score`` prints to stdout unless ``verbose=0``; it is called with ``verbose=0``.
* METEOR's first call loads a ~1 GB paraphrase table (~15 s); one instance is kept per process and
  closed at exit.
* Empty captions are safe: an empty prediction scores 0 for that clip on every metric (PTB keeps the empty
  line, METEOR accepts an empty hypothesis). References that are empty after sanitising are dropped; a
  clip with no non-empty reference is a ``UserError``.
* CIDEr's IDF comes from the references of the evaluated set, so CIDEr is only comparable on the same set
  (with a single clip it is always 0).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from typing import Mapping, Sequence

from common.errors import UserError, sample_names
from common.text import sanitize_caption

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
SPICE_KEY = "SPICE"
BERTSCORE_KEY = "BERTScore"

# A METEOR call that has not answered after this long is killed (the first call includes the ~15 s load).
METEOR_TIMEOUT_S = 900.0

JAVA_MISSING_MESSAGE = (
    "Java not found: METEOR and the PTB tokenizer need Java 17+ (apt-get install openjdk-17-jre-headless), "
    "or put a `java` binary on PATH; BLEU, ROUGE-L and CIDEr need it too because every caption is "
    "PTB-tokenized (Java) first"
)

_BERTSCORE_MODEL = "roberta-large"  # what bert_score uses for lang="en"


# ---- input checks --------------------------------------------------------------------------------

def _check_java() -> None:
    if shutil.which("java") is None:
        raise UserError(JAVA_MISSING_MESSAGE)




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


# ---- PTB tokenizer -------------------------------------------------------------------------------

def _ptb_tokenize(sentences: list[str]) -> list[str]:
    """Tokenize like ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` (same jar, flags, input bytes and
    punctuation filter), but with the temp file in the system temp dir and Java's stderr captured.
    ``sentences`` must already be sanitised (no line breaks)."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar_dir = os.path.dirname(os.path.abspath(ptb.__file__))
    jar = os.path.join(jar_dir, ptb.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        raise UserError(f"PTB tokenizer jar missing: {jar} (reinstall pycocoevalcap==1.2)")
    data = "\n".join(sentences).encode()
    try:
        tmp = tempfile.NamedTemporaryFile(delete=False, prefix="ptb_", suffix=".txt")
    except OSError as e:
        raise UserError(f"cannot create the PTB tokenizer's temp file ({e}); "
                        "set TMPDIR to a writable folder") from e
    try:
        with tmp:
            tmp.write(data)
        cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", tmp.name]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError as e:
            raise UserError(JAVA_MISSING_MESSAGE) from e
    finally:
        try:
            os.remove(tmp.name)
        except OSError:
            pass
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"PTB tokenizer (java) exited with {proc.returncode}: {' | '.join(err)}")
    lines = proc.stdout.decode().split("\n")
    if len(lines) < len(sentences) or any(line.strip() for line in lines[len(sentences):]):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions; "
                           "ids would be misaligned")
    punct = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punct)
            for line in lines[:len(sentences)]]


# ---- METEOR singleton ----------------------------------------------------------------------------

_METEOR_LOCK = threading.Lock()
_METEOR = None  # the process-wide instance, created on first use
_METEOR_PID = None  # os.getpid() of the process that started it (a forked child must not reuse/kill it)


def _meteor_class():
    from pycocoevalcap.meteor.meteor import Meteor

    class _Meteor(Meteor):
        """pycocoevalcap's Meteor with an owner-aware, non-blocking close (its own ``__del__`` blocks forever
        on the lock a failed ``compute_score`` left held)."""

        def close(self):
            p = getattr(self, "meteor_p", None)
            if p is None or getattr(self, "_owner_pid", None) != os.getpid():
                return
            self.meteor_p = None
            for step in (p.stdin.close, p.kill):
                try:
                    step()
                except (OSError, ValueError):
                    pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

        def __del__(self):
            self.close()

    return _Meteor


def _get_meteor():
    """Return the process's METEOR instance (caller holds ``_METEOR_LOCK``)."""
    global _METEOR, _METEOR_PID
    if _METEOR is None or _METEOR_PID != os.getpid():
        # A METEOR inherited through fork belongs to the parent: leave it alone, start our own.
        try:
            m = _meteor_class()()
        except FileNotFoundError as e:
            raise UserError(JAVA_MISSING_MESSAGE) from e
        m._owner_pid = os.getpid()
        _METEOR, _METEOR_PID = m, os.getpid()
    return _METEOR


def close_meteor() -> None:
    """Stop the METEOR JVM (registered with atexit; safe to call any time, the next score() restarts it)."""
    global _METEOR
    m, _METEOR = _METEOR, None
    if m is not None:
        m.close()


atexit.register(close_meteor)


def _meteor_score(gts: dict, res: dict) -> float:
    global _METEOR
    with _METEOR_LOCK:
        m = _get_meteor()
        proc = m.meteor_p
        watchdog = threading.Timer(METEOR_TIMEOUT_S, proc.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, _ = m.compute_score(gts, res)
        except BaseException as e:
            # The instance is unusable now (its lock may be held, its pipes out of step): discard it.
            _METEOR = None
            timed_out = not watchdog.is_alive() and proc.poll() is not None
            m.close()
            if isinstance(e, Exception):
                why = f"killed after {METEOR_TIMEOUT_S:.0f} s" if timed_out else f"{type(e).__name__}: {e}"
                raise RuntimeError(f"METEOR (java) failed ({why}); it will restart on the next call") from e
            raise
        finally:
            watchdog.cancel()
    return float(score)


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
    sanitised, untokenised captions with all references of a clip. Deterministic for the same inputs.
    Problems the user can fix (Java missing, ids mismatch, optional metric unavailable) raise ``UserError``.
    """

    def __init__(self, meteor: bool = True, spice: bool = False, bertscore: bool = False):
        self.meteor = bool(meteor)
        self.spice = bool(spice)
        self.bertscore = bool(bertscore)
        _check_java()
        if self.spice:
            _check_spice()
        if self.bertscore:
            _check_bertscore()

    @property
    def keys(self) -> tuple[str, ...]:
        keys = tuple(k for k in METRIC_KEYS if self.meteor or k != "METEOR")
        return keys + ((SPICE_KEY,) if self.spice else ()) + ((BERTSCORE_KEY,) if self.bertscore else ())

    def score(self, predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        _check_java()
        ids = _check_inputs(predictions, references)
        preds = [sanitize_caption(predictions[i]) for i in ids]
        refs = []
        for i in ids:
            clean = [c for c in (sanitize_caption(r) for r in references[i]) if c]
            if not clean:
                raise UserError(f"clip {i!r} has no non-empty reference caption")
            refs.append(clean)

        flat = preds + [r for rs in refs for r in rs]
        tokens = _ptb_tokenize(flat)
        res = {i: [tokens[k]] for k, i in enumerate(ids)}
        gts, pos = {}, len(ids)
        for i, rs in zip(ids, refs):
            gts[i] = tokens[pos:pos + len(rs)]
            pos += len(rs)

        out: dict[str, float] = {}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            out[f"BLEU-{n + 1}"] = 100.0 * float(bleu[n])
        if self.meteor:
            out["METEOR"] = 100.0 * _meteor_score(gts, res)
        out["ROUGE-L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        out["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])
        if self.spice:
            out[SPICE_KEY] = 100.0 * self._spice(gts, res)
        if self.bertscore:
            out[BERTSCORE_KEY] = 100.0 * self._bertscore(preds, refs)
        return {k: out[k] for k in self.keys}

    @staticmethod
    def _spice(gts: dict, res: dict) -> float:
        from pycocoevalcap.spice.spice import Spice

        _check_spice()  # never let Spice() start a download
        return float(Spice().compute_score(gts, res)[0])

    @staticmethod
    def _bertscore(preds: list[str], refs: list[list[str]]) -> float:
        from bert_score import score as bert_score

        _, _, f1 = bert_score(preds, refs, lang="en", rescale_with_baseline=True, idf=True, verbose=False)
        return float(f1.mean())
