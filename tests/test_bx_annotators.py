"""tools/bx_annotators.py: an annotator's label scored against the clip's other labels, on its own clip, on
another clip's, and the constant caption beside it."""
from __future__ import annotations

import shutil
import statistics

import pytest

from common.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTB tokenizer)")

WORDS = ["elbow", "shoulder", "knee", "wrist", "heel", "chin", "hip", "thumb", "ankle", "spine", "neck", "toe"]


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """12 synthetic clips of 4 persons and 2 techniques in 2 person folds; every clip's 3 labels name one
    body part of its own, so an annotator of the same clip agrees with the others and one of another does not."""
    from dataloaders.formats import load_clips
    from dataloaders.splits import write_folds
    from dataloaders.synthetic import generate

    root = tmp_path_factory.mktemp("annotators")
    clips = load_clips(generate(root / "full")["train"])[:12]
    for i, c in enumerate(clips):
        c["video_name"] = f"{i % 4}_view_{i}"
        c["labels"] = [f"keep your {WORDS[i]} higher", f"your {WORDS[i]} drops , keep it higher",
                       f"the {WORDS[i]} is too low"]
    write_folds(clips, root / "splits", "syn", 2, 0)
    return root / "splits"


def test_an_annotator_of_the_clip_scores_above_one_of_another_clip_and_each_number_is_the_scorers(folds):
    from dataloaders.formats import load_clips
    from metrics.caption import CaptionScorer
    from metrics.motion_control import derangement_within, technique_of
    from tools.bx_annotators import main

    summary = main(["--splits", str(folds), "--name", "syn", "--folds", "2", "--json", str(folds / "a.json")])
    same, swap = summary["same_clip"]["CIDEr"], summary["swap_technique"]["CIDEr"]
    assert all(s > o for s, o in zip(same["folds"], swap["folds"]))
    assert all(c < 0 for c in summary["swap_technique"]["change"]["folds"])
    assert summary["annotator_beats_constant"] == 2  # the constant caption names another clip's body part
    # fold 0's within-technique swap, written out: label j of the donor against the clip's other labels
    val = load_clips(folds / "syn_cv0_val.pkl")
    donor = derangement_within([technique_of(c) for c in val], 0)
    scorer = CaptionScorer(meteor=False)
    by_hand = statistics.mean(
        scorer.score({c["video_name"]: val[d]["labels"][j] for c, d in zip(val, donor)},
                     {c["video_name"]: [lab for i, lab in enumerate(c["labels"]) if i != j] for c in val})["CIDEr"]
        for j in range(3))
    assert swap["folds"][0] == pytest.approx(by_hand)


def test_clips_with_one_label_and_missing_folds_are_clear_errors(folds, tmp_path):
    from dataloaders.formats import dump_clips, load_clips
    from tools.bx_annotators import main

    with pytest.raises(UserError, match="fold file not found: .*syn_cv2_train.pkl"):
        main.__wrapped__(["--splits", str(folds), "--name", "syn", "--folds", "3"])
    for k in (0, 1):
        shutil.copy(folds / f"syn_cv{k}_train.pkl", tmp_path / f"one_cv{k}_train.pkl")
        clips = load_clips(folds / f"syn_cv{k}_val.pkl")
        dump_clips([dict(c, labels=c["labels"][:1]) for c in clips], tmp_path / f"one_cv{k}_val.pkl")
    with pytest.raises(UserError, match="one_cv0_val.pkl: every clip needs at least 2 labels"):
        main.__wrapped__(["--splits", str(tmp_path), "--name", "one", "--folds", "2"])
