"""Validation splits, person cross-validation folds and the caption baselines (constant caption per technique,
nearest neighbour per label position, random same-person clip per label position)."""
import math

import pytest
import torch

from dataloaders.retrieval import label_of_nearest
from dataloaders.splits import person_folds, person_id, person_of, person_split, random_split, seen_person_folds
from common.errors import UserError
from metrics.baselines import best_constant_captions


def clip(name, motion_type="Jab", labels=("x",), seed=0, frames=20):
    g = torch.Generator().manual_seed(seed)
    return {"video_name": name, "motion_type": motion_type, "labels": list(labels),
            "coordinates": torch.randn(frames, 66, generator=g).cumsum(0)}


def corpus():
    return [clip(f"{p}_view_{i}", seed=10 * p + i) for p in range(6) for i in range(p + 2)]


def test_person_split_never_shares_a_person_and_reaches_the_fraction():
    clips = corpus()
    train, val = person_split(clips, 0.25, seed=3)
    assert {person_of(c["video_name"]) for c in train}.isdisjoint({person_of(c["video_name"]) for c in val})
    assert len(val) >= 0.25 * len(clips) and len(train) + len(val) == len(clips)
    assert person_split(clips, 0.25, seed=3) == (train, val)  # reproducible


def test_random_split_is_a_seeded_partition():
    clips = corpus()
    train, val = random_split(clips, 0.2, seed=1)
    names = [c["video_name"] for c in train + val]
    assert sorted(names) == sorted(c["video_name"] for c in clips)
    assert len(val) == round(0.2 * len(clips))
    assert random_split(clips, 0.2, seed=1) == (train, val)
    assert random_split(clips, 0.2, seed=2) != (train, val)


def test_constant_caption_is_the_training_caption_with_the_best_cider_per_technique():
    # CIDEr's IDF comes from the references: a caption in every clip's references scores 0, one shared
    # by 3 of 6 clips wins over captions that fit a single clip.
    common, other = "keep your rear hand at the chin", "rotate the hips into the cross"
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    clips = [clip(f"j{i}", "Jab", [common if i < 3 else f"{words[i]} step", f"{words[i]} {words[i + 1]}"])
             for i in range(6)]
    clips += [clip(f"c{i}", "Cross", [other if i < 3 else f"{words[i]} turn"]) for i in range(6)]
    best = best_constant_captions(clips)
    assert best == {"Jab": common, "Cross": other}


def test_nearest_neighbour_returns_the_closest_clip_of_the_same_technique():
    train = [clip("a", "Jab", ["label a"], seed=1), clip("b", "Cross", ["label b"], seed=2),
             clip("c", "Jab", ["label c"], seed=3, frames=30)]
    test = [dict(clip("t1", "Jab", seed=1), video_name="t1"),  # same motion as "a"
            dict(clip("t2", "Cross", seed=1), video_name="t2")]  # same motion as "a", but only "b" is a Cross
    assert label_of_nearest(train, test) == {"t1": "label a", "t2": "label b"}


def test_label_position_scores_find_the_position_a_neighbour_shares():
    from metrics.baselines import label_position_scores

    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    clips = []
    for p in range(4):  # person p: two nearly identical clips; label 1 is the person's, label 0 is per clip
        for i in range(2):
            c = clip(f"{p}_v_{i}", seed=p)
            c["coordinates"] = c["coordinates"] + 0.01 * i
            c["labels"] = [f"x{p}{i}a y{p}{i}b", f"person {words[p]} keeps the {words[p + 4]} hand low"]
            clips.append(c)
    scores = label_position_scores(clips)
    assert set(scores) == {0, 1} and scores[1] > 100 > 1 > scores[0]
    across = label_position_scores(clips, exclude="PERSON")  # other persons never share a remark
    assert across[1] < 1


def test_nearest_neighbour_rows_take_each_label_position():
    from metrics.baselines import baseline_predictions

    train = [clip("0_a", "Jab", ["a0 jab", "a1 jab", "a2 jab"], seed=1), clip("1_b", "Jab", ["b0", "b1", "b2"], seed=2),
             clip("2_c", "Cross", ["c0 cross", "c1 cross"], seed=3), clip("3_d", "Cross", ["d0", "d1"], seed=4)]
    test = [dict(clip("t1", "Jab", seed=1), video_name="9_t1"), dict(clip("t2", "Cross", seed=3), video_name="9_t2")]
    rows = baseline_predictions(train, test)
    assert list(rows) == ["constant caption (no motion)", "nearest neighbour, label 0", "nearest neighbour, label 1",
                          "nearest neighbour (facing forward), label 0", "nearest neighbour (facing forward), label 1"]
    assert rows["nearest neighbour, label 1"] == {"9_t1": "a1 jab", "9_t2": "c1 cross"}


def test_a_clip_whose_technique_has_no_training_clip_gets_the_constant_caption_in_every_nearest_row():
    from metrics.baselines import CONSTANT, baseline_predictions, nearest_predictions

    train = [clip("0_a", "Jab", ["a0 jab", "a1 jab"], seed=1), clip("1_b", "Jab", ["b0 jab", "b1 jab"], seed=2)]
    test = [dict(clip("t1", "Jab", seed=1), video_name="9_t1"), dict(clip("t2", "Hook", seed=3), video_name="9_t2")]
    constant = baseline_predictions(train, test)[CONSTANT]
    rows = nearest_predictions(train, test)
    assert len(rows) == 4 and all(row["9_t2"] == constant["9_t2"] != "" for row in rows.values())
    assert rows["nearest neighbour, label 1"]["9_t1"] == "a1 jab"
    assert nearest_predictions(train, test, constant={"9_t1": "unused", "9_t2": "given"})["nearest neighbour, label 0"] \
        == {"9_t1": "a0 jab", "9_t2": "given"}


def test_facing_forward_neighbour_finds_the_same_motion_filmed_from_the_other_side():
    from metrics.baselines import baseline_predictions
    from tests.test_data import _turn_about_y

    train = [clip(f"{i}_a", "Jab", [f"l{i}"], seed=i) for i in range(6)]
    for c in train:  # every clip faces its own way, as clips filmed from different cameras do
        c["coordinates"] = _turn_about_y(c["coordinates"] * 0.3, 60.0 * int(c["video_name"][0]))
    test = [dict(train[3], video_name="9_t", coordinates=_turn_about_y(train[3]["coordinates"], 180.0))]
    rows = baseline_predictions(train, test)
    assert rows["nearest neighbour (facing forward), label 0"] == {"9_t": "l3"}
    assert rows["nearest neighbour, label 0"] != {"9_t": "l3"}  # in camera coordinates the half turn dominates


def test_swapped_neighbour_rows_look_up_the_donor_clips_motion():
    from metrics.baselines import nearest_swap_rows
    from metrics.motion_control import derangement_within

    train = [clip(f"{i}_tr", "Jab" if i < 4 else "Cross", [f"l0 {i}", f"l1 {i}"], seed=i) for i in range(7)]
    test = [dict(train[i], video_name=f"9_t{i}", labels=[f"r {i}"]) for i in range(7)]  # each the motion of train[i]
    refs = {c["video_name"]: c["labels"] for c in test}

    class Recorder:
        def __init__(self):
            self.preds = []

        def score(self, preds, references):
            assert references == refs  # scored against each clip's own labels
            self.preds.append(preds)
            return {"CIDEr": 0.0}

    scorer = Recorder()
    rows = nearest_swap_rows(scorer, train, test, refs, seed=3)
    assert list(rows) == [f"nearest neighbour{f}, label {p}, motion swapped within technique"
                          for f in ("", " (facing forward)") for p in (0, 1)]
    donor = derangement_within([c["motion_type"] for c in test], 3)
    assert all(donor[i] != i for i in range(7)) and all(test[donor[i]]["motion_type"] == test[i]["motion_type"]
                                                           for i in range(7))
    # the neighbour of a swapped clip is the training clip whose motion it now carries
    assert scorer.preds[1] == {f"9_t{i}": f"l1 {donor[i]}" for i in range(7)}


def persons_corpus():
    """Persons 0-2 with Jab clips (person 2 has no Cross), labels naming person, technique, position, clip."""
    clips = []
    for p, techniques in ((0, ("Jab", "Cross")), (1, ("Jab", "Cross")), (2, ("Jab",))):
        for mt in techniques:
            for i in range(3):
                clips.append(clip(f"{p}_v_{mt}{i}", mt, [f"p{p} {mt} pos{k} c{i}" for k in range(3)], seed=p * 10 + i))
    return clips


def test_motion_free_draws_take_a_clip_of_the_same_person_and_technique_seeded():
    from metrics.baselines import motion_free_draws

    train = persons_corpus()
    test = [clip("0_new_1", "Jab", seed=99), clip("1_new_2", "Cross", seed=98),
            clip("2_new_3", "Cross", seed=97),  # person 2 has no training Cross: any training Cross
            clip("test_0001", "Jab", seed=96)]  # no person id: any training Jab
    rows, fallbacks = motion_free_draws(train, test)
    assert fallbacks == 2
    assert list(rows) == [f"random same-person clip, label {k} (no motion)" for k in range(3)]
    for k, draws in enumerate(rows.values()):
        assert len(draws) == 5
        for preds in draws:
            assert preds["0_new_1"].startswith(f"p0 Jab pos{k} ") and preds["1_new_2"].startswith(f"p1 Cross pos{k} ")
            assert " Cross " in preds["2_new_3"] and " Jab " in preds["test_0001"]
    firsts = rows["random same-person clip, label 0 (no motion)"]
    assert len({tuple(sorted(d.items())) for d in firsts}) > 1  # the seeds draw different clips
    # the same clip is drawn for every position of one draw; the draws repeat exactly
    assert [d["0_new_1"][-2:] for d in firsts] == [d["0_new_1"][-2:] for d in rows[
        "random same-person clip, label 2 (no motion)"]]
    assert motion_free_draws(train, test)[0] == rows


def test_strongest_baseline_is_named_by_its_mean_cider():
    from metrics.baselines import strongest_line

    rows = {"constant caption (no motion)": [{"CIDEr": 10.0}], "nearest neighbour, label 0": [{"CIDEr": 12.0}],
            "random same-person clip, label 2 (no motion)": [{"CIDEr": 11.0}, {"CIDEr": 15.0}]}
    assert strongest_line(rows) == "strongest baseline: random same-person clip, label 2 (no motion) (CIDEr 13.00)"


def test_person_folds_are_person_disjoint_cover_every_clip_once_and_are_deterministic():
    clips = [clip(f"{p}_view_{i}", seed=10 * p + i) for p in range(10) for i in range(5 + (p * 7) % 6)]
    folds = person_folds(clips, 5, seed=0)
    assert len(folds) == 5
    val_names = [c["video_name"] for _, val in folds for c in val]
    assert sorted(val_names) == sorted(c["video_name"] for c in clips)  # each clip validates exactly once
    for train, val in folds:
        assert {person_of(c["video_name"]) for c in train}.isdisjoint({person_of(c["video_name"]) for c in val})
        assert len(train) + len(val) == len(clips)
        assert len({person_of(c["video_name"]) for c in val}) == 2  # 10 persons dealt round-robin into 5 folds
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 3
    assert person_folds(clips, 5, seed=0) == folds
    assert [[c["video_name"] for c in v] for _, v in person_folds(clips, 5, seed=1)] != [[c["video_name"] for c in v]
                                                                                         for _, v in folds]
    with pytest.raises(UserError, match="--folds 11"):
        person_folds(clips, 11, seed=0)


def test_seen_person_folds_cover_every_clip_once_and_keep_each_person_and_technique_in_training():
    clips = [clip(f"{p}_view_{i}", motion_type=("Jab", "Cross")[i % 2], seed=10 * p + i)
             for p in range(4) for i in range(3 + 3 * p)]  # (person, technique) groups of 1 … 5 clips
    folds = seen_person_folds(clips, 3, seed=0)
    val_names = [c["video_name"] for _, val in folds for c in val]
    assert sorted(val_names) == sorted(c["video_name"] for c in clips)  # each clip validates exactly once
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    group = lambda c: (person_of(c["video_name"]), c["motion_type"])  # noqa: E731
    total = {g: sum(group(c) == g for c in clips) for g in map(group, clips)}
    for train, val in folds:
        assert len(train) + len(val) == len(clips)
        for g in map(group, val):
            # a group of n clips is dealt to n different folds: at most one of them validates in a fold while
            # n < K, and some stay in training whenever there are two or more
            in_train = sum(group(c) == g for c in train)
            assert in_train >= total[g] - math.ceil(total[g] / 3)
            assert total[g] < 2 or in_train >= 1
    assert seen_person_folds(clips, 3, seed=0) == folds
    assert [[c["video_name"] for c in v] for _, v in seen_person_folds(clips, 3, seed=1)] != [
        [c["video_name"] for c in v] for _, v in folds]
    with pytest.raises(UserError, match="--folds 1"):
        seen_person_folds(clips, 1, seed=0)


def test_the_splits_command_writes_seen_person_folds_with_fold_by_clip(tmp_path):
    from dataloaders.formats import dump_clips, load_clips
    from dataloaders.splits import main

    clips = [clip(f"{p}_view_{i}", seed=10 * p + i) for p in range(3) for i in range(4)]
    dump_clips(clips, tmp_path / "all.pkl")
    assert main(["--data", str(tmp_path / "all.pkl"), "--out", str(tmp_path), "--name", "s", "--folds", "2",
                 "--fold-by", "clip"]) == 0
    for k in (0, 1):
        train, val = (load_clips(tmp_path / f"s_cv{k}_{part}.pkl") for part in ("train", "val"))
        persons = lambda cs: {person_of(c["video_name"]) for c in cs}  # noqa: E731
        assert persons(val) == persons(train) == {"0", "1", "2"} and len(train) + len(val) == 12


def test_person_id_is_the_leading_number_only():
    assert person_id("2_back_5") == "2" and person_id("test_0001") is None and person_id("12") == "12"
