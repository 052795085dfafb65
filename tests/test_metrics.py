"""COCO caption metrics: parity with pycocoevalcap, sanitising, id checks, Java/SPICE/BERTScore errors.
One METEOR JVM for the module (the scorer's singleton) plus one direct Meteor() for the parity test.
Timeouts, crashes, Ctrl-C and degenerate references: test_reliability_scoring.py."""
import shutil

import pytest

from common.errors import UserError
from metrics import caption, java
from metrics.caption import METRIC_KEYS, CaptionScorer, ScoringError, sanitize_caption

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer, METEOR)")

# Each prediction equals one of its clip's references (exactly, up to case/punctuation).
REFERENCES = {
    "c0": ["a person walks forward slowly.", "someone walks slowly ahead", "a man strolls forward"],
    "c1": ["a man jumps up and down twice", "the person jumps in place two times"],
    "c2": ["a person waves the right hand", "someone raises the right arm and waves"],
    "c3": ["the figure sits down on a chair", "a person sits down slowly", "someone takes a seat"],
    "c4": ["a person turns around to the left", "someone spins to the left"],
}
MATCHING = {
    "c0": "A person walks forward slowly",
    "c1": "the person jumps in place two times.",
    "c2": "a person waves the right hand",
    "c3": "a person sits down slowly",
    "c4": "Someone spins to the left!",
}
# A realistic, imperfect set of predictions.
PREDICTIONS = {
    "c0": "a person walks forward",
    "c1": "a man jumps in place",
    "c2": "a person waves his right hand",
    "c3": "a person sits on a chair",
    "c4": "a person turns left",
}


@pytest.fixture(scope="module")
def scorer():
    return CaptionScorer()


@pytest.fixture(scope="module")
def scores(scorer):
    return scorer.score(PREDICTIONS, REFERENCES)


def direct_pycocoevalcap(predictions, references):
    """The reference computation: what the COCO caption toolkit does, called directly."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": r} for r in v] for k, v in references.items()})
    res = tok.tokenize({k: [{"caption": predictions[k]}] for k in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor = Meteor()
    try:
        met, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    vals = list(bleu) + [met, rouge, cider]
    return {k: 100.0 * float(v) for k, v in zip(METRIC_KEYS, vals)}


@pytest.mark.slow
def test_keys_are_the_exact_json_keys(scores):
    assert tuple(scores) == METRIC_KEYS
    assert all(isinstance(v, float) for v in scores.values())


@pytest.mark.slow
def test_values_equal_direct_pycocoevalcap_times_100(scores):
    expected = direct_pycocoevalcap(PREDICTIONS, REFERENCES)
    for key in METRIC_KEYS:
        assert scores[key] == pytest.approx(expected[key], abs=1e-9, rel=0), key
    assert 0 < scores["BLEU-4"] < 100 and scores["CIDEr"] > 1  # on the 0-100 scale, not 0-1


@pytest.mark.slow
def test_prediction_equal_to_a_reference_gives_bleu4_100(scorer):
    s = scorer.score(MATCHING, REFERENCES)
    assert s["BLEU-4"] == pytest.approx(100.0, abs=1e-6)
    assert s["BLEU-1"] == pytest.approx(100.0, abs=1e-6)


@pytest.mark.slow
def test_shuffled_predictions_score_lower_on_bleu4_and_cider(scorer):
    ids = list(MATCHING)
    shuffled = {k: MATCHING[ids[(n + 1) % len(ids)]] for n, k in enumerate(ids)}
    good = scorer.score(MATCHING, REFERENCES)
    bad = scorer.score(shuffled, REFERENCES)
    assert bad["BLEU-4"] < good["BLEU-4"] - 20
    assert bad["CIDEr"] < good["CIDEr"] - 50


def test_mismatched_ids_raise_user_error_listing_them(scorer):
    preds = {k: v for k, v in PREDICTIONS.items() if k != "c3"}
    preds["zz_extra"] = "a person walks"
    with pytest.raises(UserError) as err:
        scorer.score(preds, REFERENCES)
    msg = str(err.value)
    assert "'c3'" in msg and "'zz_extra'" in msg and "\n" not in msg
    assert "5 predictions" in msg and "5 references" in msg


def test_mismatched_ids_list_at_most_five():
    refs = {f"r{i}": ["a person walks"] for i in range(8)}
    with pytest.raises(UserError) as err:
        CaptionScorer(meteor=False).score({"p": "a person walks"}, refs)
    msg = str(err.value)
    assert "8 clip id(s)" in msg and "'r4'" in msg and "'r5'" not in msg and "..." in msg


def test_reference_given_as_bare_string_is_a_user_error(scorer):
    with pytest.raises(UserError, match="list of strings"):
        scorer.score({"a": "a person walks"}, {"a": "a person walks"})


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_newline_pipes_and_control_chars_do_not_hang_or_raise(scorer):
    refs = {"a": ["a person\nwalks ||| forward", "someone walks\r\x0cforward"], "b": ["a man jumps", "x\u2028y"]}
    preds = {"a": "a person walks\nforward ||| fast\x00", "b": "a man|||jumps\u2029"}
    s = scorer.score(preds, refs)
    assert set(s) == set(METRIC_KEYS) and all(v == v for v in s.values())
    # the METEOR singleton is still healthy afterwards
    assert scorer.score(MATCHING, REFERENCES)["METEOR"] > 90


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_empty_prediction_scores_zero_for_its_clip_without_error(scorer):
    preds = dict(MATCHING, c2="", c4="...")
    s = scorer.score(preds, REFERENCES)
    full = scorer.score(MATCHING, REFERENCES)
    assert set(s) == set(METRIC_KEYS)
    assert s["METEOR"] < full["METEOR"] and s["ROUGE-L"] == pytest.approx(full["ROUGE-L"] * 3 / 5)


@pytest.mark.slow
def test_line_separators_do_not_shift_captions_onto_other_clips(scorer):
    # U+2028 / \x0b / \x85 make Java's PTB tokenizer start a new line; unsanitised, every later clip would
    # be scored against the wrong caption.
    preds = dict(MATCHING, c0="A person walks\u2028forward\x0bslowly\x85")
    assert scorer.score(preds, REFERENCES)["BLEU-4"] == pytest.approx(100.0, abs=1e-6)


def test_sanitize_caption_makes_one_clean_line():
    assert sanitize_caption(" a\nb\r\nc\td\x00e ||| f\u2028g\u00a0h\u200bi |||| j || k ") == "a b c d e f g hi j || k"  # U+200B (Cf) is removed
    assert sanitize_caption("\n\t ") == ""


@pytest.mark.slow
def test_no_output_on_stdout_or_stderr(scorer, capfd):
    scorer.score(PREDICTIONS, REFERENCES)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.slow
def test_deterministic_two_calls_identical(scorer, scores):
    again = scorer.score(dict(reversed(list(PREDICTIONS.items()))), REFERENCES)
    assert again == scores


def test_java_missing_raises_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="Java not found") as err:
        CaptionScorer(meteor=False)
    assert "PTB" in str(err.value) and "BLEU" in str(err.value)


def test_java_missing_at_score_time_raises_user_error(monkeypatch):
    s = CaptionScorer(meteor=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="Java not found"):
        s.score(PREDICTIONS, REFERENCES)


def test_spice_without_corenlp_jars_raises_user_error_not_download(monkeypatch, tmp_path):
    monkeypatch.setattr(caption, "_spice_dir", lambda: str(tmp_path))
    (tmp_path / "lib").mkdir()
    with pytest.raises(UserError, match="SPICE needs Stanford CoreNLP"):
        CaptionScorer(meteor=False, spice=True)
    assert list((tmp_path / "lib").iterdir()) == []


@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_spice_runs_under_a_timeout_and_fails_in_one_line():
    """pycocoevalcap runs SPICE with no timeout; here the run is killed at the limit, and a SPICE that cannot
    run (this machine lacks its CoreNLP jars) is a ScoringError naming it, not a hang or a traceback."""
    gts, res = {"a": ["a man runs"]}, {"a": ["a man runs fast"]}
    with pytest.raises(ScoringError, match=r"SPICE \(java, 1 captions\) did not finish within 0.001 s and was killed"):
        java.spice_score(gts, res, timeout_s=0.001)
    if not caption_spice_ready():
        with pytest.raises(ScoringError, match=r"SPICE \(java, 1 captions\) exited with code") as err:
            java.spice_score(gts, res, timeout_s=120)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="spice_timeout_s"):
        CaptionScorer(meteor=False, spice_timeout_s=0)


def caption_spice_ready() -> bool:
    try:
        caption._check_spice()
    except UserError:
        return False
    return True


def test_bertscore_unavailable_raises_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bert_score(name, *args, **kwargs):
        if name == "bert_score":
            raise ImportError("No module named 'bert_score'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bert_score)
    with pytest.raises(UserError, match="bert_score"):
        CaptionScorer(meteor=False, bertscore=True)


def test_meteor_false_omits_the_key():
    s = CaptionScorer(meteor=False)
    assert s.keys == tuple(k for k in METRIC_KEYS if k != "METEOR")
    assert tuple(s.score(PREDICTIONS, REFERENCES)) == s.keys


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_meteor_failure_discards_the_instance_instead_of_hanging(scorer):
    # pycocoevalcap's Meteor raises on a raw newline and keeps its lock held: the next call (or its __del__)
    # would block forever. The scorer must drop that instance, kill its JVM and start a fresh one.
    scorer.score(MATCHING, REFERENCES)
    proc = java._METEOR.meteor_p
    with pytest.raises(ScoringError, match="METEOR") as err:
        java.meteor_score({"a": ["a b"]}, {"a": ["a\nb"]})
    assert "\n" not in str(err.value)
    assert java._METEOR is None and proc.poll() is not None
    assert scorer.score(MATCHING, REFERENCES)["METEOR"] > 90
