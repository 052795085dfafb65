"""tools/blind_data.py: the motion taken out of a dataset file, everything else kept."""
import pytest
import torch

from common.errors import UserError
from tools.blind_data import blind_clips, main


def clip(name, technique, frames, **extra):
    return {"video_name": name, "motion_type": technique, "coordinates": torch.randn(frames, 66),
            "labels": [f"label of {name}"], "aligned_start": 2, **extra}


def test_every_clip_of_a_technique_gets_the_same_still_pose_and_keeps_the_rest():
    standards = {"Jab": torch.randn(9, 66), "Cross": torch.randn(7, 66)}
    clips = [clip("1_a", "Jab", 12), clip("2_b", "Jab", 5), clip("1_c", "Cross", 8)]
    out = blind_clips(clips, standards)
    for before, after in zip(clips, out):
        assert {k: v for k, v in after.items() if k != "coordinates"} == \
               {k: v for k, v in before.items() if k != "coordinates"}
        assert after["coordinates"].shape == before["coordinates"].shape
        assert torch.equal(after["coordinates"], standards[before["motion_type"]][:1].expand_as(after["coordinates"]))
    assert not torch.equal(clips[0]["coordinates"], out[0]["coordinates"])  # the input is left as it was


def test_a_technique_without_a_standard_is_one_error_naming_the_clip(tmp_path, capsys):
    with pytest.raises(UserError, match=r"clip '1_a': technique 'Hook' has no standard \(standards: Jab\)"):
        blind_clips([clip("1_a", "Hook", 4)], {"Jab": torch.zeros(3, 66)})
    assert main([str(tmp_path / "x.pkl"), "--standard", str(tmp_path / "s.pkl")]) == 2
    assert "give the dataset files and then the output folder" in capsys.readouterr().err
