"""HybrIK → clips: joints 0-21 kept in order, pelvis-relative, from a res.pk (read without running code) or an
array; bad shapes and files are one clear error."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.skeleton import SMPL_PARENTS
from dataloaders import hybrik
from dataloaders.formats import load_clips


def hybrik_joints(frames: int = 6, n: int = 29, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    joints = rng.normal(size=(frames, n, 3)).astype(np.float32)
    joints[:, :, 0] += np.arange(n) * 10  # joint j has x ≈ 10 j: a reordered joint shows
    return joints


def write_res_pk(path, joints, key="pred_xyz_29"):
    """What HybrIK's demo_video.py --save-pk writes: per-frame arrays stacked, strings included."""
    frames = len(joints)
    res = {key: joints, "pred_uvd": np.zeros((frames, 29, 3), np.float32), "pred_betas": np.zeros((frames, 10)),
           "img_path": np.array([f"raw_images/v-{i:06d}.png" for i in range(frames)]), "height": np.full(frames, 720)}
    with open(path, "wb") as f:
        pickle.dump(res, f)
    return path


def test_the_joint_map_keeps_smpl_joints_0_to_21_in_order():
    assert hybrik.JOINTS[0] == "pelvis" and hybrik.JOINTS[21] == "right_wrist" and len(hybrik.JOINTS) == 22
    assert hybrik.HYBRIK_29[22:24] == ("left_thumb", "right_thumb")  # SMPL's hands: dropped
    # the names follow our skeleton's parents: each joint's parent comes before it, e.g. the wrists' elbows
    assert [hybrik.JOINTS[SMPL_PARENTS[j]] for j in (20, 21, 18, 4)] == ["left_elbow", "right_elbow",
                                                                           "left_shoulder", "left_hip"]


@pytest.mark.parametrize("n, key", [(29, "pred_xyz_29"), (24, "pred_xyz_24_struct")])
def test_a_res_pk_becomes_one_pelvis_relative_clip(tmp_path, n, key):
    joints = hybrik_joints(n=n)
    src = write_res_pk(tmp_path / "res.pk", joints, key)
    out = tmp_path / "learner.pkl"
    assert hybrik.main([str(src), "--out", str(out), "--name", "me_jab", "--motion-type", "Jab"]) == 0
    (clip,) = load_clips(out)
    assert clip["video_name"] == "me_jab" and clip["motion_type"] == "Jab"
    expected = joints[:, :22] - joints[:, :1]
    torch.testing.assert_close(clip["coordinates"], torch.from_numpy(expected.reshape(6, 66)))
    assert torch.equal(clip["coordinates"][:, :3], torch.zeros(6, 3))  # the pelvis at the origin


def test_frames_scale_and_array_inputs(tmp_path):
    joints = hybrik_joints(frames=10)
    np.save(tmp_path / "a.npy", joints)
    out = tmp_path / "out.pkl"
    assert hybrik.main([str(tmp_path / "a.npy"), "--out", str(out), "--start", "2", "--end", "7", "--scale", "2.2"]) == 0
    (clip,) = load_clips(out)
    expected = (joints[2:7, :22] - joints[2:7, :1]) * 2.2
    torch.testing.assert_close(clip["coordinates"], torch.from_numpy(expected.reshape(5, 66)), rtol=1e-5, atol=1e-5)


def test_bad_hybrik_inputs_are_named(tmp_path, capsys):
    np.save(tmp_path / "h36m.npy", np.zeros((5, 17, 3), np.float32))
    with pytest.raises(UserError, match=r"h36m\.npy: joints of shape \[5, 17, 3\].*expected \[frames, 29, 3\]"):
        hybrik.joints_of(hybrik.read_data_file(tmp_path / "h36m.npy"), tmp_path / "h36m.npy")
    with open(tmp_path / "other.pk", "wb") as f:
        pickle.dump({"pred_uvd": np.zeros((3, 29, 3))}, f)
    assert hybrik.main([str(tmp_path / "other.pk"), "--out", str(tmp_path / "o.pkl")]) == 2
    assert "no pred_xyz_29 or pred_xyz_24_struct" in capsys.readouterr().err

    class Payload:
        def __reduce__(self):
            return (print, ("ran code",))

    with open(tmp_path / "evil.pk", "wb") as f:
        pickle.dump({"pred_xyz_29": Payload()}, f)
    assert hybrik.main([str(tmp_path / "evil.pk"), "--out", str(tmp_path / "e.pkl")]) == 2
    err = capsys.readouterr()
    assert "refused to unpickle global builtins.print" in err.err and "ran code" not in err.out
    assert not (tmp_path / "e.pkl").exists()


def test_clips_given_as_joints_are_flattened_joint_by_joint(tmp_path):
    joints = hybrik_joints(n=22)
    np.save(tmp_path / "clip.npy", joints)
    (clip,) = load_clips(tmp_path / "clip.npy")
    assert clip["coordinates"].shape == (6, 66)
    assert torch.equal(clip["coordinates"][:, 3:6], torch.from_numpy(joints[:, 1]))  # joint 1's x, y, z
