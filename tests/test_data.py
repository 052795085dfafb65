"""Data layer: safe loading, validation messages, skeleton features, datasets and collate."""
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from common.text import FINETUNE_PROMPT, PRETRAIN_PROMPT
from dataloaders.datasets import EvalDataset, TrainDataset, augment_speed, collate, load_dataset
from common.skeleton import SMPL_PARENTS
from dataloaders.features import (augment_turn_and_scale, face_forward, resample_in_time, skeleton_features,
                                  turn_about_vertical)
from dataloaders.formats import load_clips, load_standards
from dataloaders.validation import validate_clips
from common.errors import UserError

BX = Path(__file__).resolve().parents[1].parent / "shared/data/bx"


def clip(name="a", frames=5, motion_type="Jab", labels=("keep your guard up",), seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    return {"video_name": name, "motion_type": motion_type, "coordinates": torch.randn(frames, 66, generator=g),
            "labels": list(labels), **extra}


def save_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


# ----------------------------------------------------------------------------- safe loading

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused_naming_the_global(tmp_path):
    marker = tmp_path / "pwned"
    path = save_pickle(tmp_path / "evil.pkl", [{"video_name": "x", "coordinates": _RunsCode(marker)}])
    with pytest.raises(UserError) as e:
        load_clips(path)
    msg = str(e.value)
    assert f"refused to unpickle global {os.system.__module__}.system" in msg and str(path) in msg
    assert not marker.exists()


class _EvilStorageBlob:
    """A storage whose embedded bytes are themselves a code-running pickle (plain torch would run it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return torch.storage._load_from_bytes, (pickle.dumps(_RunsCode(self.marker), protocol=2),)


def test_code_inside_embedded_tensor_bytes_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = save_pickle(tmp_path / "evil.pkl", [{"video_name": "x", "coordinates": _EvilStorageBlob(marker)}])
    with pytest.raises(UserError, match="evil.pkl: refused or corrupt embedded tensor data"):
        load_clips(path)
    assert not marker.exists()


def test_missing_unknown_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.pkl: file not found"):
        load_clips(tmp_path / "nope.pkl")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(UserError, match=r"data.csv: unsupported file type"):
        load_clips(tmp_path / "data.csv")
    good = pickle.dumps([clip()])
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cut.pkl: unreadable or corrupt"):
        load_clips(tmp_path / "cut.pkl")


def test_npy_is_one_clip_named_after_the_file(tmp_path):
    np.save(tmp_path / "Jab.npy", np.ones((4, 66), dtype=np.float64))
    (c,) = load_clips(tmp_path / "Jab.npy")
    assert c["video_name"] == "Jab" and c["coordinates"].dtype == torch.float32
    assert c["coordinates"].shape == (4, 66)
    assert set(load_standards(tmp_path / "Jab.npy")) == {"Jab"}


def test_torch_save_list_and_single_dict(tmp_path):
    torch.save([clip("a"), clip("b", coordinates=np.zeros((3, 66)))], tmp_path / "two.pt")
    clips = load_clips(tmp_path / "two.pt")
    assert [c["video_name"] for c in clips] == ["a", "b"]
    assert all(c["coordinates"].dtype == torch.float32 for c in clips)
    torch.save(clip("solo"), tmp_path / "one.pth")
    assert [c["video_name"] for c in load_clips(tmp_path / "one.pth")] == ["solo"]


def test_pickled_numpy_coordinates_become_float32_tensors(tmp_path):
    path = save_pickle(tmp_path / "np.pkl", [clip("a", coordinates=np.zeros((3, 66)), camera_view=np.int64(1))])
    (c,) = load_clips(path)
    assert isinstance(c["coordinates"], torch.Tensor) and c["coordinates"].dtype == torch.float32


def test_bx_train_loads_and_validates_with_both_standards():
    if not (BX / "BX_train.pkl").exists():
        pytest.skip(f"real BX data not present at {BX}")
    standards = load_standards(BX / "BX_standard.pkl")
    assert set(standards) == {"Jab", "Cross"}
    clips = load_dataset(BX / "BX_train.pkl", pretrain=False, branch=1, segment="ALIGNED", standards=standards)
    assert len(clips) == 163
    assert all(c["coordinates"].dtype == torch.float32 and c["coordinates"].shape[1] == 66 for c in clips)
    assert {c["motion_type"] for c in clips} == {"Jab", "Cross"}


# ----------------------------------------------------------------------------- validation messages

def _set(key, value):
    def mutate(c):
        c[key] = value
    return mutate


def _drop(key):
    def mutate(c):
        del c[key]
    return mutate


def _nan(c):
    c["coordinates"][3, 7] = float("nan")


BAD = {
    "width_65": (_set("coordinates", torch.zeros(5, 65)), "key 'coordinates' has width 65, expected 66"),
    "nan": (_nan, "1 non-finite values (1 NaN, 0 inf), first at frame 3"),
    "one_frame": (_set("coordinates", torch.zeros(1, 66)), "has 1 frame(s), expected at least 2"),
    "empty_label": (_set("labels", ["ok", " "]), "key 'labels' item 1 is empty"),
    "no_labels": (_set("labels", []), "key 'labels' is empty"),
    "missing_key": (_drop("coordinates"), "missing key 'coordinates'"),
    "duplicate": (_set("video_name", "a"), "video_name 'a' is duplicated (also entry 0)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_validation_error_names_file_entry_and_video_name(case):
    mutate, expected = BAD[case]
    clips = [clip("a"), clip("b")]
    mutate(clips[1])
    with pytest.raises(UserError) as e:
        validate_clips(clips, "data/train.pkl")
    name = clips[1]["video_name"]
    assert str(e.value).startswith(f"data/train.pkl: entry 1 (video_name {name!r}): ")
    assert expected in str(e.value)


def test_valid_clips_pass():
    validate_clips([clip("a"), clip("b")], "x.pkl", require_motion_type=True)


def test_missing_standard_lists_the_available_ones():
    std = {"Jab": torch.zeros(4, 66), "Cross": torch.zeros(4, 66)}
    with pytest.raises(UserError, match=r"entry 1 \(video_name 'b'\): motion_type 'Hook' has no standard motion; "
                                        r"available standards: Cross, Jab"):
        validate_clips([clip("a"), clip("b", motion_type="Hook")], "t.pkl", standards=std)


def test_segment_keys_are_required_and_range_checked():
    seg = dict(aligned_start_frame=0, aligned_end_frame=5, aligned_std_start_frame=1, aligned_std_end_frame=6,
               aligned_seq_len=5)
    std = {"Jab": torch.zeros(6, 66)}
    validate_clips([clip("a", **seg)], "t.pkl", standards=std, segment="ALIGNED")
    partial = {k: v for k, v in seg.items() if k != "aligned_seq_len"}
    with pytest.raises(UserError, match="entry 0 \\(video_name 'a'\\): missing key 'aligned_seq_len'"):
        validate_clips([clip("a", **partial)], "t.pkl", segment="ALIGNED")
    with pytest.raises(UserError, match="'aligned_std_end_frame'=7 out of range"):
        validate_clips([clip("a", **{**seg, "aligned_std_end_frame": 7})], "t.pkl", standards=std,
                       segment="ALIGNED")


def test_subtraction_must_match_frames_and_width():
    good = [clip("a", subtraction=torch.zeros(5, 8)), clip("b", subtraction=torch.zeros(5, 8))]
    validate_clips(good, "t.pkl", require_subtraction=True)
    with pytest.raises(UserError, match="entry 1 \\(video_name 'b'\\): key 'subtraction' has 4 frames, expected 5"):
        validate_clips([good[0], clip("b", subtraction=torch.zeros(4, 8))], "t.pkl", require_subtraction=True)
    with pytest.raises(UserError, match="key 'subtraction' has width 9, expected 8 \\(as entry 0\\)"):
        validate_clips([good[0], clip("b", subtraction=torch.zeros(5, 9))], "t.pkl", require_subtraction=True)


def test_load_dataset_requirements_follow_task_and_branch(tmp_path):
    path = save_pickle(tmp_path / "d.pkl", [{"video_name": "a", "coordinates": torch.zeros(3, 66),
                                            "labels": ["a person walks"]}])
    assert len(load_dataset(path, pretrain=True, branch=0)) == 1
    with pytest.raises(UserError, match="missing key 'motion_type'"):
        load_dataset(path, pretrain=False, branch=0)
    with pytest.raises(UserError, match="missing key 'subtraction'"):
        load_dataset(path, pretrain=True, branch=2)
    with pytest.raises(UserError, match="standards"):
        load_dataset(path, pretrain=False, branch=1)
    unlabeled = save_pickle(tmp_path / "u.pkl", [{"video_name": "a", "coordinates": torch.zeros(3, 66)}])
    with pytest.raises(UserError, match="missing key 'labels'"):
        load_dataset(unlabeled, pretrain=True, branch=0)


# ----------------------------------------------------------------------------- features

def test_bones_are_child_minus_parent_in_the_child_slot_and_pelvis_zero():
    joints = torch.zeros(2, 22, 3)
    joints[:, :, 0] = torch.arange(22.0) ** 2  # distinct x per joint, so a wrong slot or sign shows
    joints[:, 15, 1] = 7.0  # head (parent: neck 12) moves up
    f = skeleton_features(joints.reshape(2, 66))
    assert f.shape == (6, 2, 22)
    assert torch.equal(f[:3].permute(1, 2, 0), joints)
    assert torch.equal(f[3:, :, 0], torch.zeros(3, 2))  # pelvis bone
    assert torch.equal(f[3:, 0, 15], torch.tensor([15.0 ** 2 - 12.0 ** 2, 7.0, 0.0]))
    assert torch.equal(f[3:, 0, 12], torch.tensor([12.0 ** 2 - 9.0 ** 2, 0.0, 0.0]))  # not overwritten by head
    for j in range(1, 22):
        assert torch.equal(f[3:, :, j].T, joints[:, j] - joints[:, SMPL_PARENTS[j]])


def test_features_of_a_batch_equal_features_per_clip_and_padding_stays_zero():
    coords = torch.randn(3, 7, 66)
    coords[1, 4:] = 0  # a padded clip
    batch = skeleton_features(coords)
    assert batch.shape == (3, 6, 7, 22)
    for b in range(3):
        assert torch.equal(batch[b], skeleton_features(coords[b]))
    assert torch.equal(batch[1, :, 4:], torch.zeros(6, 3, 22))


def _turn_about_y(coords: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotation about the vertical axis written out with a rotation matrix (independent of face_forward)."""
    a = math.radians(float(degrees))
    R = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]],
                     dtype=coords.dtype)
    return (coords.reshape(*coords.shape[:-1], 22, 3) @ R.T).reshape(coords.shape)


def test_face_forward_puts_the_first_frames_hips_on_plus_x_and_keeps_height_and_lengths():
    coords = torch.randn(9, 66, dtype=torch.float64)
    out = face_forward(coords).reshape(9, 22, 3)
    hips = out[0, 2] - out[0, 1]  # right hip - left hip, first frame
    assert hips[0] > 0 and abs(float(hips[2])) < 1e-12
    joints = coords.reshape(9, 22, 3)
    assert torch.equal(out[..., 1], joints[..., 1])  # y (vertical) untouched
    torch.testing.assert_close(out.norm(dim=-1), joints.norm(dim=-1))  # a rotation about the pelvis
    torch.testing.assert_close(face_forward(face_forward(coords)), face_forward(coords))  # idempotent


@pytest.mark.parametrize("degrees", [30.0, 90.0, 180.0, -135.0])
def test_face_forward_removes_a_turn_of_the_whole_clip_about_the_vertical_axis(degrees):
    coords = torch.randn(6, 66, dtype=torch.float64)
    torch.testing.assert_close(face_forward(_turn_about_y(coords, degrees)), face_forward(coords))
    tilted = (coords.reshape(6, 22, 3) @ torch.tensor([[1.0, 0, 0], [0, 0.8, 0.6], [0, -0.6, 0.8]],
                                                      dtype=torch.float64).T).reshape(6, 66)
    assert not torch.allclose(face_forward(tilted), face_forward(coords))  # only turns about y are removed


def test_face_forward_of_a_batch_equals_per_clip_and_keeps_padding_zero():
    coords = torch.randn(3, 7, 66)
    coords[1, 4:] = 0
    batch = face_forward(coords)
    for b in range(3):
        torch.testing.assert_close(batch[b], face_forward(coords[b]), rtol=0, atol=0)
    assert torch.equal(batch[1, 4:], torch.zeros(3, 66))


def test_turn_about_vertical_turns_each_clip_by_its_own_angle():
    coords = torch.randn(3, 5, 66, dtype=torch.float64)
    angles = [20.0, -90.0, 170.0]
    out = turn_about_vertical(coords, torch.tensor([math.radians(a) for a in angles], dtype=torch.float64))
    for b, a in enumerate(angles):
        torch.testing.assert_close(out[b], _turn_about_y(coords[b], a))


def _heading(coords: torch.Tensor) -> torch.Tensor:
    """The first frame's hip line's heading in the x-z plane, as face_forward measures it."""
    joints = coords.reshape(*coords.shape[:-1], 22, 3)
    hips = joints[..., 0, 2, :] - joints[..., 0, 1, :]
    return torch.atan2(hips[..., 2], hips[..., 0])


def test_augmentation_turns_and_scales_each_clip_within_its_bounds_and_keeps_padding_zero():
    torch.manual_seed(0)
    coords = torch.randn(64, 7, 66, dtype=torch.float64)
    coords[5, 4:] = 0
    out = augment_turn_and_scale(coords, 30.0, 0.1)
    scale = out.flatten(1).norm(dim=1) / coords.flatten(1).norm(dim=1)  # a turn keeps the norm
    assert ((scale >= 0.9) & (scale <= 1.1)).all() and scale.std() > 0.02
    turn = torch.remainder(_heading(coords) - _heading(out) + math.pi, 2 * math.pi) - math.pi
    assert (turn.abs() <= math.radians(30) + 1e-9).all() and turn.abs().max() > math.radians(20)
    for b in range(64):  # rigid about the vertical axis, then scaled: nothing else changed
        torch.testing.assert_close(out[b] / scale[b], _turn_about_y(coords[b], math.degrees(turn[b])))
    assert torch.equal(out[5, 4:], torch.zeros(3, 66))
    assert augment_turn_and_scale(coords, 0.0, 0.0) is coords  # off: the batch as it came


def test_augmentation_draws_from_the_global_generator_that_checkpoints_hold():
    coords = torch.randn(4, 6, 66)
    torch.manual_seed(1)
    first = augment_turn_and_scale(coords, 180.0, 0.2)
    torch.manual_seed(1)
    assert torch.equal(augment_turn_and_scale(coords, 180.0, 0.2), first)
    assert not torch.equal(augment_turn_and_scale(coords, 180.0, 0.2), first)


def test_resampling_in_time_maps_first_to_first_last_to_last_and_interpolates_between():
    torch.manual_seed(0)
    lengths = torch.tensor([9, 5, 1])
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    x[1, 5:] = 0
    x[2, 1:] = 0
    assert torch.equal(resample_in_time(x, lengths, lengths), x)  # its own length: exactly the clip
    new = torch.tensor([13, 3, 4])
    out = resample_in_time(x, lengths, new)
    assert out.shape == (3, 13, 4)
    for b in range(3):  # batch vs single: each clip resampled alone gives the same frames
        alone = resample_in_time(x[b: b + 1, : lengths[b]], lengths[b: b + 1], new[b: b + 1])
        torch.testing.assert_close(out[b: b + 1, : new[b]], alone, rtol=0, atol=0)
        assert torch.equal(out[b, new[b]:], torch.zeros(13 - new[b], 4))  # zero after the new end
    # clip 0, 9 -> 13 frames: frame t sits at source time t * 8 / 12, written out
    for t in range(13):
        src = t * 8 / 12
        lo, w = int(src), src - int(src)
        expected = x[0, lo] * (1 - w) + x[0, min(lo + 1, 8)] * w
        torch.testing.assert_close(out[0, t], expected)
    torch.testing.assert_close(out[1], torch.cat([x[1, [0, 2, 4]], torch.zeros(10, 4, dtype=torch.float64)]))
    assert torch.equal(out[2, :4], x[2, :1].expand(4, 4))  # a one-frame clip held


def _batch_with_segments(lengths, starts):
    """A collated-looking batch whose frame t of clip b holds the value t (every coordinate): after a
    resample, a frame's value is the source time it was taken from."""
    lengths = torch.tensor(lengths)
    steps = int(lengths.max())
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    coords = (torch.arange(steps, dtype=torch.float32)[None, :, None] * mask[..., None]).expand(-1, -1, 66).clone()
    return {"video_names": [f"{b}_x_1" for b in range(len(lengths))], "coordinates": coords, "frame_mask": mask,
            "lengths": lengths, "segment_start": torch.tensor(starts), "std_segment_start": torch.tensor([7] * len(lengths)),
            "subtraction": coords[..., :5].clone()}


def test_speed_augmentation_resamples_each_clip_and_moves_its_segment_start_to_the_same_instant():
    batch = _batch_with_segments([60, 41, 30, 12], [20, 0, 29, 5])
    torch.manual_seed(0)
    out = augment_speed(batch, 0.3)
    lengths, new = batch["lengths"], out["lengths"]
    speed = lengths / new  # played faster: fewer frames
    assert ((speed > 1 / 1.35) & (speed < 1.35)).all() and not torch.equal(new, lengths)
    assert torch.equal(out["frame_mask"], torch.arange(out["coordinates"].shape[1])[None, :] < new[:, None])
    for b in range(4):
        clip = out["coordinates"][b, : new[b], 0]
        assert clip[0] == 0 and clip[-1] == lengths[b] - 1  # first to first, last to last
        assert torch.equal(out["coordinates"][b, new[b]:], torch.zeros(out["coordinates"].shape[1] - new[b], 66))
        # the new segment start shows (within half a new frame) the instant the old one did
        step = (lengths[b] - 1) / (new[b] - 1)
        assert abs(float(clip[out["segment_start"][b]]) - float(batch["segment_start"][b])) <= step / 2 + 1e-4
        assert 0 <= out["segment_start"][b] < new[b]
        torch.testing.assert_close(out["subtraction"][b], out["coordinates"][b, :, :5])  # moved with the motion
    assert torch.equal(out["std_segment_start"], batch["std_segment_start"])  # the standard stays as recorded
    assert out["video_names"] == batch["video_names"]
    assert augment_speed(batch, 0.0) is batch  # off: the batch as it came, no draw


def test_speed_augmentation_draws_from_the_global_generator_that_checkpoints_hold():
    batch = _batch_with_segments([50, 40, 30, 20, 44, 33], [1, 2, 3, 4, 5, 6])
    torch.manual_seed(1)
    first = augment_speed(batch, 0.5)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    assert torch.equal(augment_speed(batch, 0.5)["coordinates"], first["coordinates"])
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(augment_speed(batch, 0.5)["lengths"], first["lengths"])


# ----------------------------------------------------------------------------- datasets and collate

def test_train_dataset_has_one_sample_per_label_and_shares_coordinates():
    clips = [clip("a", labels=["l1", "l2", "l3"], augmented_labels=["p1"]), clip("b", labels=["m1"])]
    ds = TrainDataset(clips)
    assert [(ds[i]["video_name"], ds[i]["text"]) for i in range(len(ds))] == [
        ("a", "l1"), ("a", "l2"), ("a", "l3"), ("b", "m1")]
    assert ds[1]["coordinates"].data_ptr() == clips[0]["coordinates"].data_ptr()  # no copy per label
    assert [ds[i]["text"] for i in range(len(ds))] == ["l1", "l2", "l3", "m1"]
    aug = TrainDataset(clips, use_augmented_labels=True)
    assert [aug[i]["text"] for i in range(len(aug))] == ["l1", "l2", "l3", "p1", "m1"]
    assert ds[0]["segment"] is None and ds[0]["subtraction"] is None and ds[0]["motion_type"] == "Jab"


def test_eval_dataset_has_one_item_per_clip_with_all_references():
    clips = [clip("a", labels=["l1", "l2"]), {"video_name": "u", "coordinates": torch.zeros(3, 66)}]
    ds = EvalDataset(clips)
    assert len(ds) == 2 and ds[0]["references"] == ["l1", "l2"] and ds[1]["references"] == []
    assert "text" not in ds[0]


def test_collate_pads_with_zeros_and_masks_by_length():
    seg = dict(gt_start_frame=1, gt_end_frame=3, gt_std_start_frame=2, gt_std_end_frame=4, gt_seq_len=2)
    clips = [clip("a", frames=3, subtraction=torch.ones(3, 4), **seg),
             clip("b", frames=5, subtraction=torch.ones(5, 4), **seg)]
    batch = collate([TrainDataset(clips, segment="GT")[i] for i in range(2)])
    assert batch["coordinates"].shape == (2, 5, 66)
    assert torch.equal(batch["lengths"], torch.tensor([3, 5]))
    assert torch.equal(batch["frame_mask"], torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    assert torch.equal(batch["coordinates"][0, :3], clips[0]["coordinates"])
    assert torch.equal(batch["coordinates"][0, 3:], torch.zeros(2, 66))
    assert batch["subtraction"].shape == (2, 5, 4) and batch["subtraction"][0, 3:].abs().sum() == 0
    assert torch.equal(batch["segment_start"], torch.tensor([1, 1]))
    assert torch.equal(batch["std_segment_start"], torch.tensor([2, 2]))
    assert batch["texts"] == ["keep your guard up"] * 2 and batch["video_names"] == ["a", "b"]
    plain = collate([EvalDataset([clip("a"), clip("b")])[i] for i in range(2)])
    assert "segment_start" not in plain and "subtraction" not in plain and "texts" not in plain
    assert plain["references"] == [["keep your guard up"]] * 2


def test_prompts_are_distinct():
    assert PRETRAIN_PROMPT == "Motion Description : " and FINETUNE_PROMPT == "Motion Instruction : "
