"""Synthetic data: reproducible bytes, the released format, and captions that describe the motion."""
import re

import pytest

from dataloaders.datasets import load_dataset
from dataloaders.formats import load_clips, load_standards
from dataloaders.synthetic import DEVIATIONS, generate, instruction

FILES = ("pretrain_train", "pretrain_test", "train", "test", "standard")


@pytest.fixture(scope="module")
def seed0(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("seed0"), seed=0)


@pytest.fixture(scope="module")
def data(seed0):
    standards = load_standards(seed0["standard"])
    kw = dict(pretrain=False, branch=1, segment="ALIGNED", standards=standards)
    return {"standards": standards,
            "pretrain": load_dataset(seed0["pretrain_train"], pretrain=True, branch=0)
            + load_dataset(seed0["pretrain_test"], pretrain=True, branch=0),
            "finetune": load_dataset(seed0["train"], **kw) + load_dataset(seed0["test"], **kw)}


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_and_another_seed_differs(seed0, tmp_path):
    again, other = generate(tmp_path / "again", seed=0), generate(tmp_path / "other", seed=1)
    for stem in FILES:
        assert seed0[stem].read_bytes() == again[stem].read_bytes(), stem
    for stem in ("pretrain_train", "train", "test"):
        assert seed0[stem].read_bytes() != other[stem].read_bytes(), stem


def test_files_have_the_released_format_and_sizes(seed0, data):
    sizes = {stem: len(load_clips(seed0[stem])) for stem in FILES}
    assert sizes == {"pretrain_train": 300, "pretrain_test": 60, "train": 200, "test": 50, "standard": 2}
    assert set(data["standards"]) == {"Jab", "Cross"}
    frames = [c["coordinates"].shape[0] for c in data["pretrain"] + data["finetune"]]
    assert min(frames) >= 32 and max(frames) <= 80
    longer = [c for c in data["finetune"] if c["coordinates"].shape[0] > data["standards"][c["motion_type"]].shape[0]]
    assert longer, "some finetune clips must be longer than their standard"
    keys = {"video_name", "motion_type", "coordinates", "camera_view", "labels", "augmented_labels",
            "original_seq_len", "aligned_start_frame", "aligned_end_frame", "aligned_std_start_frame",
            "aligned_std_end_frame", "aligned_seq_len"}
    assert all(set(c) == keys for c in data["finetune"])
    for c in data["finetune"]:  # the aligned windows have equal length
        assert c["aligned_end_frame"] - c["aligned_start_frame"] == c["aligned_seq_len"]
        assert c["aligned_std_end_frame"] - c["aligned_std_start_frame"] == c["aligned_seq_len"] > 0


def test_finetune_label_names_one_deviation_and_augmented_labels_paraphrase_it(data):
    for c in data["finetune"]:
        m = c["motion_type"]
        devs = [d for d in DEVIATIONS if (m == "Cross" or d != "no_rotation") and instruction(d, m) == c["labels"][0]]
        assert len(devs) == 1, c["labels"]
        assert c["labels"] == [instruction(devs[0], m)]
        assert c["augmented_labels"] == [instruction(devs[0], m, v) for v in (1, 2, 3)]
    assert len({c["labels"][0] for c in data["finetune"]}) == 9  # 4 Jab + 5 Cross corrections


def _joints(c):
    return c["coordinates"].reshape(-1, 22, 3)


def _separated(clips, has, measure):
    """Every clip whose labels match `has` measures strictly above every clip whose labels don't."""
    yes = [measure(c) for c in clips if has(c)]
    no = [measure(c) for c in clips if not has(c)]
    assert yes and no
    return min(yes) > max(no)


def test_each_instruction_is_visible_in_the_motion(data):
    clips = data["finetune"]
    punch = {"Jab": (16, 18, 20), "Cross": (17, 19, 21)}  # shoulder, elbow, wrist of the punching arm
    guard_wrist = {"Jab": 21, "Cross": 20}

    def has(word):
        return lambda c: word in c["labels"][0]

    def drop(c):  # how far the guard hand falls below the neck
        j = _joints(c)
        return float((j[:, 12, 1] - j[:, guard_wrist[c["motion_type"]], 1]).max())

    def short(c):  # the punching arm never reaches full extension
        sh, _, wr = punch[c["motion_type"]]
        return -float((_joints(c)[:, wr] - _joints(c)[:, sh]).norm(dim=-1).max())

    def flare(c):  # elbow goes out along the shoulder line, away from the body
        j = _joints(c)
        sh, el, _ = punch[c["motion_type"]]
        out = j[:, sh] - j[:, 33 - sh]  # from the other shoulder to this one
        return float(((j[:, el] - j[:, sh]) * out / out.norm(dim=-1, keepdim=True)).sum(-1).max())

    assert _separated(clips, has("hand drops"), drop)
    assert _separated(clips, has("Extend your arm"), short)
    assert _separated(clips, has("elbow"), flare)


def test_pretrain_captions_follow_the_motion(data):
    clips = data["pretrain"]
    assert len({c["labels"][0] for c in clips}) >= 20
    raises = [c for c in clips if " raises the " in c["labels"][0]]

    def above_head(c):
        side = 20 if "left arm" in c["labels"][0] else 21
        return float((_joints(c)[:, side, 1] - _joints(c)[:, 15, 1]).max())
    assert _separated(raises, lambda c: "above the head" in c["labels"][0], above_head)

    def left_moves_more(c):
        j = _joints(c)
        travel = (j[:, [20, 21]] - j[:1, [20, 21]]).norm(dim=-1).max(dim=0).values
        return float(travel[0] - travel[1])
    arms = [c for c in clips if re.search(r"(raises|punch)", c["labels"][0])]
    assert _separated(arms, lambda c: "left" in c["labels"][0], left_moves_more)
    # speed: "slowly"/"slow" clips are longer than "quickly"/"fast" ones
    slow = [c["coordinates"].shape[0] for c in clips if re.search(r"\bslow", c["labels"][0])]
    quick = [c["coordinates"].shape[0] for c in clips if re.search(r"quick|fast", c["labels"][0])]
    assert min(slow) > max(quick)
