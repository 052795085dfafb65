"""Motion control: each clip's motion swapped for another clip's within groups, labels and names in place."""
import numpy as np
import torch

from metrics.motion_control import (MOTION_KEYS, derangement_within, motion_control_json, motion_control_rows,
                                    person_technique_of, relative_drop, swap_motion, technique_of)


def clip(name, motion_type, frames, seed):
    g = torch.Generator().manual_seed(seed)
    return {"video_name": name, "motion_type": motion_type, "labels": [f"label of {name}"],
            "camera_view": "front", "coordinates": torch.randn(frames, 66, generator=g),
            "original_seq_len": frames, "subtraction": torch.full((frames, 3), float(seed)),
            "aligned_start_frame": seed % 3, "aligned_end_frame": frames, "aligned_std_start_frame": seed % 5,
            "aligned_std_end_frame": frames + 1, "aligned_seq_len": frames - seed % 3}


def corpus():
    """Person 0: 3 jabs, 1 cross; person 1: 2 jabs; person 2: 1 cross; two synthetic names without a person."""
    spec = [("0_a_1", "Jab"), ("0_a_2", "Jab"), ("0_b_3", "Jab"), ("0_a_4", "Cross"), ("1_a_1", "Jab"),
            ("1_b_2", "Jab"), ("2_a_1", "Cross"), ("test_0001", "Jab"), ("test_0002", "Jab")]
    return [clip(name, mt, 20 + i, i) for i, (name, mt) in enumerate(spec)]


def test_derangement_stays_within_groups_and_moves_every_clip_of_a_group_of_two_or_more():
    groups = ["a", "b", "a", "c", "a", "b", "d", "d", "a"]
    for seed in range(20):
        donor = derangement_within(groups, seed)
        assert sorted(donor.tolist()) == list(range(len(groups)))  # a permutation
        assert all(groups[d] == groups[i] for i, d in enumerate(donor))
        assert [i for i, d in enumerate(donor) if d == i] == [3]  # only the group of one keeps its own
    assert np.array_equal(derangement_within(groups, 5), derangement_within(groups, 5))
    assert any(not np.array_equal(derangement_within(groups, 0), derangement_within(groups, s)) for s in range(1, 5))


def test_swap_moves_coordinates_and_segments_together_and_keeps_names_and_labels():
    clips = corpus()
    before = {c["video_name"]: dict(c) for c in clips}
    swapped, kept = swap_motion(clips, technique_of, seed=3)
    assert kept == 0  # every technique has at least two clips
    by_coords = {id(c["coordinates"]): c for c in clips}
    for orig, new in zip(clips, swapped):
        assert new["video_name"] == orig["video_name"] and new["labels"] == orig["labels"]
        assert new["motion_type"] == orig["motion_type"] and new["camera_view"] == orig["camera_view"]
        donor = by_coords[id(new["coordinates"])]
        assert donor is not orig and donor["motion_type"] == orig["motion_type"]
        for key in MOTION_KEYS:
            if key in donor:
                assert new[key] is donor[key], key  # the whole motion moves, no key stays behind
    assert {c["video_name"]: c for c in clips} == before  # the input clips are untouched
    assert [c["video_name"] for c in swap_motion(clips, technique_of, seed=3)[0]] == list(before)


def test_person_and_technique_groups_and_names_without_a_person_id():
    clips = corpus()
    swapped, kept = swap_motion(clips, person_technique_of, seed=0)
    donors = {new["video_name"]: next(c["video_name"] for c in clips if c["coordinates"] is new["coordinates"])
              for new in swapped}
    # groups of one keep their motion: person 0's only cross, person 2's only cross
    assert kept == 2 and donors["0_a_4"] == "0_a_4" and donors["2_a_1"] == "2_a_1"
    assert donors["1_a_1"] == "1_b_2" and donors["1_b_2"] == "1_a_1"
    assert {donors[n] for n in ("0_a_1", "0_a_2", "0_b_3")} == {"0_a_1", "0_a_2", "0_b_3"}
    assert all(donors[n] != n for n in ("0_a_1", "0_a_2", "0_b_3"))
    # synthetic names have no person: they form one group per technique and swap among themselves
    assert donors["test_0001"] == "test_0002" and donors["test_0002"] == "test_0001"


def test_a_key_only_the_donor_has_moves_and_one_only_the_receiver_has_leaves():
    a, b = clip("0_a", "Jab", 20, 1), clip("0_b", "Jab", 30, 2)
    del a["subtraction"]
    swapped, _ = swap_motion([a, b], technique_of)
    assert "subtraction" in swapped[0] and "subtraction" not in swapped[1]


def test_rows_and_json_report_the_relative_cider_drop_and_the_kept_clips():
    metrics = {"real": {"BLEU-4": 10.0, "CIDEr": 50.0}, "swap_technique": {"BLEU-4": 8.0, "CIDEr": 40.0},
               "swap_person_technique": {"BLEU-4": 9.0, "CIDEr": 55.0}}
    result = {"metrics": metrics, "kept_own_motion": {"real": 9, "swap_technique": 0, "swap_person_technique": 2},
              "changed": {"real": 0, "swap_technique": 7, "swap_person_technique": 5}, "clips": 9, "captions": {}}
    rows = motion_control_rows(result, ["BLEU-4", "CIDEr"])
    assert list(rows) == ["real motion", "swap within technique", "swap within person+technique"]
    assert rows["swap within technique"]["CIDEr drop"] == "+20.0 %"
    assert rows["swap within person+technique"]["CIDEr drop"] == "-10.0 %"
    assert rows["swap within person+technique"]["own motion"] == "2/9" and rows["real motion"]["CIDEr drop"] == "-"
    out = motion_control_json(result)
    assert out["real"] == metrics["real"] and out["swap_person_technique"]["CIDEr"] == 55.0
    assert out["kept_own_motion"]["swap_person_technique"] == 2 and out["clips"] == 9
    assert relative_drop(0.0, 3.0) is None


class _CountingScorer:
    def __init__(self):
        self.calls = 0

    def score(self, captions, refs):
        self.calls += 1
        return {"CIDEr": float(sum(captions[n] == refs[n][0] for n in captions))}


def test_known_real_captions_are_not_made_or_scored_again():
    from metrics.motion_control import run_motion_control

    clips = corpus()
    made = []

    def caption(inputs):  # "the model": writes what its motion holds
        made.append(len(inputs))
        return {c["video_name"]: f"{float(c['coordinates'][0, 0]):.4f}" for c in inputs}

    full_scorer, short_scorer = _CountingScorer(), _CountingScorer()
    full = run_motion_control(caption, clips, full_scorer)
    assert made == [len(clips)] * 3 and full_scorer.calls == 3
    assert full["changed"]["swap_technique"] > 0
    made.clear()
    short = run_motion_control(caption, clips, short_scorer, real=(full["captions"]["real"], full["metrics"]["real"]))
    assert made == [len(clips)] * 2 and short_scorer.calls == 2  # only the two swaps
    assert short == full
