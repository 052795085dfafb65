"""The person adversary: a gradient reversal in front of a person head on T5's encoder output."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from engine.weights import load_pretrained_weights
from models.adversary import PersonAdversary, reverse_gradient
from tests.helpers import assert_training_loss_is_cross_entropy_plus, make_batch, random_clip, tiny_config, tiny_model

OFF = {"DROPOUT": 0.0, "TRANSFORMATION": {"PROJECTION_DROPOUT": 0.0, "PERSON_ADVERSARY": 0.5}}
PERSONS = ["0", "1", "2"]


def test_reverse_gradient_is_the_identity_forward_and_negates_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    y = reverse_gradient(x)
    assert torch.equal(y, x)
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, -torch.arange(4.0).expand(3, 4))


def _adversary_model():
    return tiny_model(tiny_config(T5={"DROPOUT": 0.0}, **OFF), persons=PERSONS).train()


def _batch():
    batch = make_batch([random_clip(8, seed=1), random_clip(6, seed=2), random_clip(7, seed=3)])
    batch["video_names"] = ["2_back_1", "0_side_4", "2_front_2"]
    return batch


def _person_nll(model, hidden, mask, persons) -> torch.Tensor:
    """The adversary's loss written out per sample: the person head on the mean of the valid tokens."""
    total = 0.0
    for b, person in enumerate(persons):
        logits = model.person_adversary.head(hidden[b, mask[b]].mean(0))
        total = total - torch.log_softmax(logits, -1)[PERSONS.index(person)]
    return total / len(persons)


def test_training_loss_is_cross_entropy_plus_the_weighted_person_loss():
    model = _adversary_model()
    batch = _batch()
    labels = model.codec.encode_targets(["a person walks forward", "jumps", "keep your hand at chin"])
    assert_training_loss_is_cross_entropy_plus(
        model, batch, labels, 0.5, lambda hidden, mask: _person_nll(model, hidden, mask, ["2", "0", "2"]), floor=0.1)


def test_the_head_learns_to_tell_persons_apart_and_everything_below_it_learns_the_opposite():
    model = _adversary_model()
    batch = _batch()

    def grads(reverse: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        tokens, mask, _, _ = model.encode(batch)
        hidden = model.t5.encoder(inputs_embeds=tokens, attention_mask=mask.long()).last_hidden_state
        if reverse:
            loss = model.person_adversary.loss(hidden, mask, [n.split("_")[0] for n in batch["video_names"]])
        else:
            loss = _person_nll(model, hidden, mask, ["2", "0", "2"])
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reversed_, plain = grads(True), grads(False)
    assert set(reversed_) == set(plain)
    head = "person_adversary.head.weight"
    torch.testing.assert_close(reversed_[head], plain[head])  # the head descends the person loss
    below = [n for n in plain if not n.startswith("person_adversary.")]
    assert "encoder.input_bn.weight" in below and any(n.startswith("t5.encoder.") for n in below)
    for name in below:  # the STA-GCN, the projection and T5's encoder ascend it
        torch.testing.assert_close(reversed_[name], -plain[name])


def test_padding_does_not_change_the_person_loss():
    head = PersonAdversary(4, PERSONS)
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    padded = torch.cat([hidden, torch.randn(2, 2, 4)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], 1)
    expected = F.cross_entropy(head.head(torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])),
                               torch.tensor([1, 2]))
    torch.testing.assert_close(head.loss(hidden, mask, ["1", "2"]), expected)
    torch.testing.assert_close(head.loss(padded, padded_mask, ["1", "2"]), expected)


def test_a_person_outside_the_heads_classes_and_a_single_person_are_refused():
    head = PersonAdversary(4, PERSONS)
    with pytest.raises(UserError, match=r"person\(s\) 7 of this batch are not among the 3 persons"):
        head.loss(torch.randn(1, 2, 4), torch.ones(1, 2, dtype=torch.bool), ["7"])
    with pytest.raises(UserError, match="PERSON_ADVERSARY needs clips of at least 2 persons"):
        PersonAdversary(4, ["0"])


def test_default_model_has_no_person_head_and_finetuning_starts_the_head_fresh():
    plain = tiny_model(tiny_config())
    assert plain.person_adversary is None and not any("person_adversary" in n for n, _ in plain.named_parameters())
    adversarial = _adversary_model()
    head = adversarial.person_adversary.head.weight.detach().clone()
    load_pretrained_weights(adversarial, {"model": plain.state_dict()}, "pretrain.pt")
    assert torch.equal(adversarial.person_adversary.head.weight, head)
    torch.testing.assert_close(adversarial.t5.shared.weight, plain.t5.shared.weight)
    assert adversarial.config.persons == PERSONS
