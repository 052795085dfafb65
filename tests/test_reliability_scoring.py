"""Scoring when things go wrong: a Java that cannot start, hangs or crashes, Ctrl-C while Java runs,
degenerate references, malformed predictions JSON and a run folder given twice to --summary.

A fake `java` (a shell script first on PATH) plays the misbehaving JVM; for the commands it does not
intercept it runs the real one."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from common.errors import EXIT_USER_ERROR, UserError
from metrics import java
from metrics.caption import CaptionScorer, ScoringError, close_meteor

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer, METEOR)")

PREDICTIONS = {"c0": "a person walks forward", "c1": "a man jumps in place"}
REFERENCES = {"c0": ["a person walks forward slowly", "someone walks ahead"],
              "c1": ["a man jumps up and down", "the person jumps in place"]}

# Stand-ins for a JVM, as shell commands: one that never answers, one that starts a child and waits for
# it (as a wrapper script around the real JVM would), writing both process ids where the test finds them.
HANG = "exec sleep 60"
WRAPPED_HANG = 'sleep 60 & echo $! > "$PIDS/child"; wait'


def fake_java(tmp_path: Path, monkeypatch, intercept: str, action: str) -> Path:
    """Put a `java` on PATH that runs `action` when its arguments match the shell pattern `intercept`
    and the real java otherwise; returns the folder where it leaves process ids."""
    real = shutil.which("java")
    pids = tmp_path / "pids"
    pids.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "java"
    script.write_text(f'#!/bin/sh\nPIDS="{pids}"\necho $$ > "$PIDS/java"\n'
                      f'case "$*" in {intercept}) {action};; esac\nexec "{real}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return pids


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (orphans may never be reaped in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stops(pid_file: Path, within_s: float = 10.0) -> bool:
    """The process named in `pid_file` is gone, or goes within `within_s` (a SIGKILL is delivered
    asynchronously: a grandchild may still be listed just after its group was killed)."""
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + within_s
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def interrupt_when_written(path: Path, timeout_s: float = 30.0) -> threading.Thread:
    """Send SIGINT to the main thread (what Ctrl-C does) once `path` exists."""
    main = threading.main_thread().ident

    def wait_then_interrupt():
        deadline = time.monotonic() + timeout_s
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # let the caller block on the child's output
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=wait_then_interrupt, daemon=True)
    thread.start()
    return thread


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


@pytest.fixture
def python_ctrl_c():
    """Ctrl-C as Python handles it by default (KeyboardInterrupt in the main thread), whatever ran earlier in
    this process: in the full suite's order a SIGINT here once raised nothing (cause not found yet)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture
def fresh_meteor():
    """No METEOR left from other tests: the next score starts one with the PATH of this test."""
    close_meteor()
    yield
    close_meteor()


# ---- Java that cannot start, hangs or crashes ------------------------------------------------------

@needs_java
@pytest.mark.slow
def test_java_that_cannot_start_fails_at_construction_naming_why(monkeypatch):
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Xmx1k")  # a JVM on PATH that cannot initialise
    with pytest.raises(ScoringError) as err:
        CaptionScorer(meteor=False)
    assert_one_line(err, "Java cannot start", "Too small maximum heap", "JAVA_TOOL_OPTIONS")


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_java_that_hangs_at_start_up_times_out_at_construction(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, "-version", HANG)
    start = time.monotonic()
    with pytest.raises(ScoringError) as err:
        CaptionScorer(meteor=False, java_start_timeout_s=1)
    assert_one_line(err, "Java cannot start", "java -version", "within 1 s")
    assert time.monotonic() - start < 20


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_hanging_ptb_tokenizer_times_out_with_a_one_line_error(tmp_path, monkeypatch):
    pids = fake_java(tmp_path, monkeypatch, "*PTBTokenizer*", HANG)
    scorer = CaptionScorer(meteor=False, ptb_timeout_s=1)
    start = time.monotonic()
    with pytest.raises(ScoringError) as err:
        scorer.score(PREDICTIONS, REFERENCES)
    assert_one_line(err, "PTB tokenizer", "within 1 s")
    assert time.monotonic() - start < 20
    assert stops(pids / "java")


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hanging_meteor_times_out_and_restarts_on_the_next_call(tmp_path, monkeypatch, fresh_meteor):
    pids = fake_java(tmp_path, monkeypatch, "*-jar*", WRAPPED_HANG)
    scorer = CaptionScorer(meteor_timeout_s=2)
    with pytest.raises(ScoringError) as err:
        scorer.score(PREDICTIONS, REFERENCES)
    assert_one_line(err, "METEOR", "within 2 s")
    assert java._METEOR is None
    assert stops(pids / "child")


@needs_java
@pytest.mark.slow
def test_crashing_java_raises_scoring_error_with_its_message(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, "*PTBTokenizer*", 'echo "Exception: disk quota exceeded" >&2; exit 3')
    scorer = CaptionScorer(meteor=False)
    with pytest.raises(ScoringError) as err:
        scorer.score(PREDICTIONS, REFERENCES)
    assert isinstance(err.value, UserError)  # the entry scripts print it as one line
    assert_one_line(err, "PTB tokenizer", "exited with code 3", "disk quota exceeded")


def test_timeouts_must_be_positive_seconds():
    for bad in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(UserError, match="ptb_timeout_s"):
            CaptionScorer(meteor=False, ptb_timeout_s=bad)


# ---- Ctrl-C while Java runs ---------------------------------------------------------------------------

@needs_java
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ctrl_c_during_ptb_tokenization_kills_java_and_propagates(tmp_path, monkeypatch, python_ctrl_c):
    pids = fake_java(tmp_path, monkeypatch, "*PTBTokenizer*", WRAPPED_HANG)
    scorer = CaptionScorer(meteor=False)
    interrupt_when_written(pids / "child")
    with pytest.raises(KeyboardInterrupt):
        scorer.score(PREDICTIONS, REFERENCES)
    assert stops(pids / "java")
    assert stops(pids / "child")


@needs_java
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_ctrl_c_during_meteor_kills_java_and_propagates(tmp_path, monkeypatch, fresh_meteor, python_ctrl_c):
    pids = fake_java(tmp_path, monkeypatch, "*-jar*", WRAPPED_HANG)
    scorer = CaptionScorer()
    interrupt_when_written(pids / "child")
    with pytest.raises(KeyboardInterrupt):
        scorer.score(PREDICTIONS, REFERENCES)
    assert java._METEOR is None
    assert stops(pids / "child")


# ---- degenerate references --------------------------------------------------------------------------

@needs_java
@pytest.mark.slow
def test_punctuation_only_reference_is_dropped_like_an_empty_one():
    scorer = CaptionScorer(meteor=False)
    with_punctuation = {k: refs + ["...", "!!"] for k, refs in REFERENCES.items()}
    assert scorer.score(PREDICTIONS, with_punctuation) == scorer.score(PREDICTIONS, REFERENCES)


@needs_java
@pytest.mark.slow
def test_clip_with_only_punctuation_references_is_an_error_naming_it():
    scorer = CaptionScorer(meteor=False)
    with pytest.raises(UserError) as err:  # "!!" against "!!" would score BLEU-1 100 for that clip
        scorer.score(dict(PREDICTIONS, c1="!!"), dict(REFERENCES, c1=["...", "!!", " "]))
    assert_one_line(err, "'c1'", "no usable reference")


# ---- predictions / references JSON ------------------------------------------------------------------

def test_predictions_json_with_a_repeated_key_is_refused_naming_file_and_key(tmp_path):
    from metrics.report import load_predictions

    path = tmp_path / "preds.json"
    path.write_text('{"c0": "a person walks", "c1": "a man jumps", "c0": "someone sits"}')
    with pytest.raises(UserError) as err:
        load_predictions(path)
    assert_one_line(err, str(path), "'c0'", "twice")


def test_references_json_with_a_repeated_key_is_refused_naming_file_and_key(tmp_path):
    from metrics.report import load_references

    path = tmp_path / "refs.json"
    path.write_text('{"c0": ["a person walks"], "c0": ["someone sits"]}')
    with pytest.raises(UserError) as err:
        load_references(path)
    assert_one_line(err, str(path), "'c0'", "twice")


def test_evaluate_pred_refuses_a_repeated_key_with_exit_2(tmp_path, capsys):
    import evaluate

    preds = tmp_path / "preds.json"
    preds.write_text('{"c0": "a person walks", "c0": "someone sits"}')
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"c0": ["a person walks"]}))
    assert evaluate.main(["--pred", str(preds), "--ann", str(refs)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert str(preds) in err and "'c0'" in err and "twice" in err


def test_deeply_nested_json_is_a_one_line_error_naming_the_file(tmp_path):
    from metrics.report import load_predictions

    path = tmp_path / "deep.json"
    path.write_text('{"c0": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(UserError) as err:
        load_predictions(path)
    assert_one_line(err, str(path), "nested too deeply")


# ---- --summary ----------------------------------------------------------------------------------------

def finished_run(folder: Path, seed: int, cider: float) -> Path:
    """A run folder as training leaves it: config_resolved.yaml and one jsons/metrics_epoch*.json."""
    from engine.config_loader import config_from_dict, save_config

    cfg = config_from_dict({"SEED": seed, "DATA": {"TRAIN": "train.pkl", "TEST": "test.pkl"}})
    (folder / "jsons").mkdir(parents=True)
    save_config(cfg, folder / "config_resolved.yaml")
    (folder / "jsons" / "metrics_epoch1.json").write_text(json.dumps({"CIDEr": cider}))
    return folder


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_summary_counts_a_run_folder_given_twice_once_with_a_warning(tmp_path, monkeypatch):
    from engine.config_loader import load_config
    from metrics.summary import collect_runs

    run = finished_run(tmp_path / "exp" / "person_s1", seed=1, cider=10.0)
    other = finished_run(tmp_path / "exp" / "person_s2", seed=2, cider=20.0)
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(tmp_path / "exp")
    warnings = ListHandler()  # evaluate.main replaces the logger's handlers: watch it directly
    monkeypatch.setattr(logging.getLogger("motion2text"), "handlers", [warnings])
    groups = collect_runs([run, Path("person_s1"), Path(f"{run}/"), tmp_path / "link", other, run], load_config)
    assert [r["seed"] for r in groups[("exp", "person")]] == [1, 2]
    assert len(warnings.messages) == 4 and all(str(run) in w for w in warnings.messages)
    assert warnings.messages[0].startswith("--summary: person_s1 is ")
    assert any(str(tmp_path / "link") in w for w in warnings.messages)


def test_one_damaged_epoch_file_does_not_block_scoring_the_others(tmp_path):
    from metrics.report import score_epochs

    class Scorer:
        keys = ("CIDEr",)

        def score(self, preds, refs):
            return {"CIDEr": float(len(preds))}

    good, bad = tmp_path / "results_epoch1.json", tmp_path / "results_epoch2.json"
    good.write_text(json.dumps({"a": "x"}))
    bad.write_text('{"a": "trunc')  # a write cut short
    watch = ListHandler()
    logging.getLogger("motion2text").addHandler(watch)
    try:
        assert score_epochs(Scorer(), {1: good, 2: bad}, {"a": ["x"]}) == {1: {"CIDEr": 1.0}}
    finally:
        logging.getLogger("motion2text").removeHandler(watch)
    assert any("results_epoch2.json" in m for m in watch.messages)
    with pytest.raises(UserError, match="results_epoch2.json"):
        score_epochs(Scorer(), {2: bad}, {"a": ["x"]})
