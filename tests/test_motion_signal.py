"""tools/motion_signal.py: the teacher-forced motion gap and the decoder input's signal against training noise."""
from __future__ import annotations

import pytest
import torch

from tests.cli_helpers import build_in_process, tiny_data, write_experiment
from tools.motion_signal import motion_gaps, signal_and_noise


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


def test_gaps_vanish_when_the_decoder_cannot_see_the_motion(data, tmp_path, one_thread):
    exp = build_in_process(write_experiment(tmp_path / "exp", data))
    model, clips = exp.model.eval(), exp.test_set.clips
    before = motion_gaps(model, clips, exp.test_set.segment, max_label=64)
    assert before["pairs"] == sum(len(c["labels"]) for c in clips)
    assert abs(before["gap_swap_technique"]) > 1e-6  # random weights read the motion a little
    with torch.no_grad():
        for block in model.t5.decoder.block:
            block.layer[1].EncDecAttention.o.weight.zero_()
    after = motion_gaps(model, clips, exp.test_set.segment, max_label=64)
    assert after["gap_swap_technique"] == pytest.approx(0, abs=1e-6)
    assert after["gap_swap_person_technique"] == pytest.approx(0, abs=1e-6)


def test_noise_by_source_and_the_model_left_as_it_was(data, tmp_path, one_thread):
    exp = build_in_process(write_experiment(tmp_path / "exp", data, T5={"DROPOUT": 0.0},
                                            TRANSFORMATION={"PROJECTION_DROPOUT": 0.0}))
    model = exp.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = signal_and_noise(model, exp.train_set.clips[:8], exp.train_set.segment, batch_size=4, repeats=2)
    assert out["signal"] > 0
    off = 1e-9 * out["signal"]  # both switched off: what is left is float rounding between kernels
    assert out["noise: T5 dropout"] <= off and out["noise: projection dropout"] <= off
    assert out["noise: STA-GCN dropout"] > 0 and out["noise: batch statistics"] > 0
    assert out["noise: all"] >= max(out["noise: STA-GCN dropout"], out["noise: batch statistics"]) * 0.5
    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BatchNorm statistics restored


def test_nearest_neighbour_accuracy_is_leave_one_out_and_ignores_a_shared_offset():
    from tools.motion_signal import nearest_neighbour_accuracy

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 8, generator=g) * 3
    features = centres.repeat_interleave(3, 0) + 0.1 * torch.randn(6, 8, generator=g) + 1000  # offset ≫ spread
    classes = ["a"] * 3 + ["b"] * 3
    assert nearest_neighbour_accuracy(features, classes) == 1.0
    pairs = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]]) + 1000
    assert nearest_neighbour_accuracy(pairs, ["a", "b", "a", "b"]) == 0.0  # each row's neighbour: the other class
    assert nearest_neighbour_accuracy(pairs, ["a", "a", "b", "b"]) == 1.0
    # a class of one clip: left out, its nearest neighbour can only be of another class
    assert nearest_neighbour_accuracy(pairs, ["a", "a", "b", "c"]) == 0.5


def test_separability_reports_technique_and_person_beside_the_majority_rate(data, tmp_path, one_thread):
    from tools.motion_signal import separability

    exp = build_in_process(write_experiment(tmp_path / "exp", data))
    clips = exp.train_set.clips
    out = separability(exp.model, clips, exp.train_set.segment, batch_size=4)
    assert out["clips"] == len(clips)
    assert 0 <= out["technique 1-NN"] <= 1 and 0 <= out["person 1-NN"] <= 1
    assert out["person majority"] == 1.0  # the synthetic clips have no person number: one person
    techniques = [c.get("motion_type", "-") for c in clips]
    assert out["technique majority"] == max(techniques.count(t) for t in set(techniques)) / len(clips)
