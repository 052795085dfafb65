"""Validation splits and the caption baselines (constant caption per technique, nearest-neighbour retrieval)."""
import torch

from dataloaders.splits import person_of, person_split, random_split
from dataloaders.retrieval import first_label_of_nearest
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
    assert first_label_of_nearest(train, test) == {"t1": "label a", "t2": "label b"}


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
