"""The Java processes behind the caption metrics: the start-up check, the PTB tokenizer, METEOR and SPICE.

Every Java process here runs in its own session with a timeout, and is killed with everything it started
(a `java` found on PATH may be a wrapper script that forks the JVM) when it times out, fails, or the caller
is interrupted (Ctrl-C): no JVM outlives the call that needed it, except METEOR, which is kept for the
process and stopped by ``close_meteor`` (registered with atexit).

Measured behaviour of pycocoevalcap 1.2 this module guards against:

* ``shutil.which("java")`` finding a binary does not mean a JVM starts (a bad ``JAVA_TOOL_OPTIONS``, too
  little memory): the start-up check runs ``java -version`` and reads its exit code.
* The PTB tokenizer writes its temp file inside the installed package folder (fails on a read-only
  install), logs to stderr and waits for Java without a timeout; this module runs the same jar with the
  same flags on a temp file in the system temp dir (``TMPDIR``), with stderr captured and a timeout, and
  checks that one line comes back per caption.
* METEOR loads a large paraphrase table on its first call, so one instance is kept per process. A failed
  ``Meteor.compute_score`` leaves its lock held: the next call, or its ``__del__`` at exit, blocks forever.
  A failed instance is killed and discarded here; the next call starts a fresh one.
* SPICE runs its jar with ``subprocess.check_call`` and no timeout, and writes its temp files inside the
  package: ``spice_score`` runs the same jar with the same flags and input on temp files in the system temp
  dir, with a timeout (its parse cache stays in the package's ``cache/``, as pycocoevalcap keeps it).
"""
from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading

from common.errors import UserError

JAVA_MISSING_MESSAGE = (
    "Java not found: METEOR and the PTB tokenizer need Java 17+ (apt-get install openjdk-17-jre-headless), "
    "or put a `java` binary on PATH; BLEU, ROUGE-L and CIDEr need it too because every caption is "
    "PTB-tokenized (Java) first"
)

# Default limits, in seconds; CaptionScorer takes each as a constructor argument.
JAVA_START_TIMEOUT_S = 60.0  # `java -version`: a JVM that cannot answer this is unusable
PTB_TIMEOUT_S = 600.0  # one PTB tokenizer run over every caption and reference of a set
METEOR_TIMEOUT_S = 900.0  # one METEOR call, the first one's paraphrase-table load included
SPICE_TIMEOUT_S = 3600.0  # one SPICE run: it parses every caption and reference (minutes for thousands)


class ScoringError(UserError):
    """Java could not score the captions (missing, cannot start, timed out, crashed). Training may catch it,
    log it and go on: the predictions were written before scoring."""


# ---- processes -----------------------------------------------------------------------------------

def require_java() -> None:
    """A `java` on PATH (cheap; ``check_java_starts`` also starts it)."""
    if shutil.which("java") is None:
        raise ScoringError(JAVA_MISSING_MESSAGE)


def _start_java(args: list[str], stdin=subprocess.DEVNULL, cwd=None) -> subprocess.Popen:
    # Own session: kill_java can take down a wrapper script's JVM too, by process group.
    try:
        return subprocess.Popen(["java", *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=cwd, start_new_session=True)
    except FileNotFoundError as e:
        raise ScoringError(JAVA_MISSING_MESSAGE) from e


def kill_java(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started, then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group has exited already
    proc.wait()


def _message_lines(output: bytes) -> list[str]:
    lines = (ln.strip() for ln in output.decode(errors="replace").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("at ")]  # no stack frames


def _failure_reason(stderr: bytes, stdout: bytes = b"") -> str:
    """Why Java failed, in one line: its first error lines (on stderr, or on stdout for a JVM that cannot
    initialise), then its 'Picked up ...' notes, which name the option that made it fail."""
    lines = _message_lines(stderr)
    notes = [ln for ln in lines if ln.startswith("Picked up ")]
    errors = [ln for ln in lines if not ln.startswith("Picked up ")] or _message_lines(stdout)
    reason = "; ".join(errors[:2]) or "no message"
    return reason + (f" ({'; '.join(notes)})" if notes else "")


def _run_java(args: list[str], what: str, timeout_s: float, cwd=None) -> bytes:
    """stdout of `java *args`; ScoringError naming `what` when it times out or exits non-zero."""
    with _start_java(args, cwd=cwd) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_java(proc)
            raise ScoringError(f"{what} did not finish within {timeout_s:g} s and was killed") from None
        except BaseException:  # Ctrl-C included: the JVM must not outlive us
            kill_java(proc)
            raise
    if proc.returncode != 0:
        raise ScoringError(f"{what} exited with code {proc.returncode}: {_failure_reason(stderr, stdout)}")
    return stdout


def check_java_starts(timeout_s: float = JAVA_START_TIMEOUT_S) -> None:
    """Start a JVM once (`java -version`), so a Java that cannot start fails before any work is done."""
    require_java()
    try:
        _run_java(["-version"], "`java -version`", timeout_s)
    except ScoringError as e:
        raise ScoringError(f"Java cannot start: {e}") from None


# ---- PTB tokenizer -------------------------------------------------------------------------------

def _ptb_jar() -> str:
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)), ptb.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        raise UserError(f"PTB tokenizer jar missing: {jar} (reinstall pycocoevalcap==1.2)")
    return jar


def _write_temp_lines(sentences: list[str]) -> str:
    try:
        with tempfile.NamedTemporaryFile(delete=False, prefix="ptb_", suffix=".txt") as tmp:
            tmp.write("\n".join(sentences).encode())
    except OSError as e:
        raise UserError(f"cannot create the PTB tokenizer's temp file ({e}); "
                        "set TMPDIR to a writable folder") from e
    return tmp.name


def ptb_tokenize(sentences: list[str], timeout_s: float = PTB_TIMEOUT_S) -> list[str]:
    """Tokenize like ``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`` (same jar, flags, input bytes and
    punctuation filter): one lower-cased, space-separated line per sentence, punctuation tokens dropped.
    ``sentences`` must already be sanitised (no line breaks)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    jar = _ptb_jar()
    path = _write_temp_lines(sentences)
    try:
        stdout = _run_java(["-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
                            path], f"PTB tokenizer (java, {len(sentences)} captions)", timeout_s)
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    lines = stdout.decode().split("\n")
    if len(lines) < len(sentences) or any(line.strip() for line in lines[len(sentences):]):
        raise ScoringError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions; "
                           "ids would be misaligned")
    punct = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punct) for line in lines[:len(sentences)]]


# ---- METEOR --------------------------------------------------------------------------------------

_METEOR_LOCK = threading.Lock()
_METEOR = None  # the process-wide instance, created on first use
_METEOR_PID = None  # os.getpid() of the process that started it (a forked child must not reuse/kill it)
_CRASH_EXIT_WAIT_S = 5.0  # after a failed call, how long METEOR may take to exit by itself


def _meteor_class():
    from pycocoevalcap.meteor import meteor as meteor_module

    class _Meteor(meteor_module.Meteor):
        """pycocoevalcap's Meteor, started like _run_java's processes (own session, so kill_java reaches
        it), with an owner-aware, non-blocking close instead of its blocking ``__del__``."""

        def __init__(self):  # pycocoevalcap's command and folder
            self.meteor_cmd = ["java", "-jar", "-Xmx2G", meteor_module.METEOR_JAR,
                               "-", "-", "-stdio", "-l", "en", "-norm"]
            self.meteor_p = _start_java(self.meteor_cmd[1:], stdin=subprocess.PIPE,
                                        cwd=os.path.dirname(os.path.abspath(meteor_module.__file__)))
            self.lock = threading.Lock()
            self._owner_pid = os.getpid()

        def close(self) -> None:
            p = getattr(self, "meteor_p", None)
            if p is None or getattr(self, "_owner_pid", None) != os.getpid():
                return
            self.meteor_p = None
            try:
                p.stdin.close()  # METEOR's own way out
            except (OSError, ValueError):
                pass
            kill_java(p)
            for stream in (p.stdout, p.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass

        def __del__(self):
            self.close()

    return _Meteor


def _get_meteor():
    """The process's METEOR instance (caller holds ``_METEOR_LOCK``)."""
    global _METEOR, _METEOR_PID
    if _METEOR is None or _METEOR_PID != os.getpid():
        # A METEOR inherited through fork belongs to the parent: leave it alone, start our own.
        _METEOR, _METEOR_PID = _meteor_class()(), os.getpid()
    return _METEOR


def close_meteor() -> None:
    """Stop the METEOR JVM (registered with atexit; safe to call any time, the next score restarts it)."""
    global _METEOR
    m, _METEOR = _METEOR, None
    if m is not None:
        m.close()


atexit.register(close_meteor)


def _meteor_failure(m, error: Exception, timed_out: bool, timeout_s: float) -> str:
    """Why a METEOR call failed, in one line; stops the instance's JVM on the way."""
    proc = m.meteor_p
    if timed_out:
        m.close()
        return f"did not answer within {timeout_s:g} s and was killed"
    try:
        proc.stdin.close()  # a healthy METEOR exits with 0 on end of input
    except (OSError, ValueError):
        pass  # broken pipe: it has exited already
    try:
        exit_code = proc.wait(timeout=_CRASH_EXIT_WAIT_S)  # a crashed one exits with its own code
    except subprocess.TimeoutExpired:
        exit_code = None
    kill_java(proc)
    try:
        stderr = proc.stderr.read()  # the whole group is dead: this reaches EOF
    except (OSError, ValueError):
        stderr = b""
    m.close()
    if exit_code not in (None, 0):
        return f"exited with code {exit_code}: {_failure_reason(stderr)}"
    return f"{type(error).__name__}: {error}"


def meteor_score(gts: dict, res: dict, timeout_s: float = METEOR_TIMEOUT_S) -> float:
    """Corpus METEOR of tokenized ``res`` {id: [caption]} against ``gts`` {id: [reference, ...]}, 0-1."""
    global _METEOR
    with _METEOR_LOCK:
        m = _get_meteor()
        proc = m.meteor_p
        timed_out = threading.Event()

        def kill_on_timeout():
            timed_out.set()
            kill_java(proc)

        watchdog = threading.Timer(timeout_s, kill_on_timeout)
        watchdog.daemon = True
        watchdog.start()
        try:
            score, _ = m.compute_score(gts, res)
        except BaseException as e:
            # The instance is unusable now (its lock may be held, its pipes out of step): discard it.
            watchdog.cancel()
            _METEOR = None
            if not isinstance(e, Exception):  # Ctrl-C: kill the JVM, let the interrupt through
                m.close()
                raise
            why = _meteor_failure(m, e, timed_out.is_set(), timeout_s)
            raise ScoringError(f"METEOR (java) failed: {why}; it restarts on the next call") from e
        finally:
            watchdog.cancel()
    return float(score)


# ---- SPICE ---------------------------------------------------------------------------------------

def spice_score(gts: dict, res: dict, timeout_s: float = SPICE_TIMEOUT_S) -> float:
    """Mean SPICE F-score of tokenized ``res`` {id: [caption]} against ``gts`` {id: [reference, ...]}, 0-1,
    as ``pycocoevalcap.spice.spice.Spice.compute_score`` computes it (same jar, flags and input JSON; a clip
    whose score is not a number counts as NaN, so the mean is NaN then, as there)."""
    from pycocoevalcap.spice import spice as spice_module

    folder = os.path.dirname(os.path.abspath(spice_module.__file__))
    ids = sorted(gts)
    items = [{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]
    try:
        tmp = tempfile.TemporaryDirectory(prefix="spice_")
    except OSError as e:
        raise UserError(f"cannot create SPICE's temp folder ({e}); set TMPDIR to a writable folder") from e
    with tmp as folder_tmp:
        inp, out = os.path.join(folder_tmp, "in.json"), os.path.join(folder_tmp, "out.json")
        with open(inp, "w") as f:
            json.dump(items, f)
        _run_java(["-jar", "-Xmx8G", spice_module.SPICE_JAR, inp, "-cache",
                   os.path.join(folder, spice_module.CACHE_DIR), "-out", out, "-subset", "-silent"],
                  f"SPICE (java, {len(ids)} captions)", timeout_s, cwd=folder)
        with open(out) as f:
            results = json.load(f)
    scores = [_float_or_nan(item["scores"]["All"]["f"]) for item in results]
    return sum(scores) / len(scores) if scores else math.nan


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
