"""Projection, reference alignment and the whole STA-GCN → T5 model: masks, padding, generation, loss."""
import pytest
import torch

from alignment.reference import fuse_with_standard
from alignment.window_search import best_window_start, gather_window
from models.projection import Projection, reduce_tokens
from models.motion2text import other_clip_index
from tests.helpers import (assert_evaluation_loss_is_plain_cross_entropy, assert_training_loss_is_cross_entropy_plus,
                           make_batch, random_clip, take, tiny_config, tiny_model)

POLICIES = ["TIME_POOL", "SKELETON_POOL", "ORIGIN"]
STANDARDS = {"Jab": random_clip(14, seed=100), "Cross": random_clip(9, seed=101)}


# ---- projection ---------------------------------------------------------------------------------

def test_time_pool_ignores_padded_frames_even_when_features_are_negative():
    emb = -torch.rand(1, 6, 22, 8) - 1.0  # all negative: a max over zero-padding would return 0
    mask = torch.tensor([[True] * 4 + [False] * 2])
    tokens, token_mask = reduce_tokens(emb * mask[..., None, None], mask, "TIME_POOL")
    assert torch.equal(tokens, emb[:, :4].amax(1))
    assert token_mask.shape == (1, 22) and token_mask.all()


@pytest.mark.parametrize("policy, n_tokens", [("TIME_POOL", 22), ("SKELETON_POOL", 6), ("ORIGIN", 6 * 22)])
def test_token_mask_follows_the_policy(policy, n_tokens):
    emb = torch.randn(2, 6, 22, 8)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    tokens, token_mask = reduce_tokens(emb, mask, policy)
    assert tokens.shape == (2, n_tokens, 8) and token_mask.shape == (2, n_tokens)
    expected_valid = {"TIME_POOL": 22, "SKELETON_POOL": 3, "ORIGIN": 3 * 22}[policy]
    assert int(token_mask[1].sum()) == expected_valid


def test_projection_output_is_zero_on_masked_tokens_and_batchnorm_sees_valid_tokens_only():
    torch.manual_seed(0)
    proj = Projection(8, 12, "SKELETON_POOL").train()
    emb = torch.randn(2, 5, 22, 8)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    out, token_mask = proj(emb, mask)
    assert out.shape == (2, 5, 12)
    assert torch.all(out[1, 2:] == 0)
    # Changing padded frames must not change anything (train mode: BN statistics would see them).
    emb2 = emb.clone()
    emb2[1, 2:] = 1e3
    torch.manual_seed(1)
    out_a, _ = proj(emb, mask)
    torch.manual_seed(1)
    out_b, _ = proj(emb2, mask)
    assert torch.allclose(out_a, out_b)


# ---- alignment ----------------------------------------------------------------------------------

def brute_force_start(learner, mask, standard, std_len):
    """Reference: try every start in Python (what the original did, slowly)."""
    starts = []
    for b in range(learner.shape[0]):
        L, Ls = int(mask[b].sum()), int(std_len[b])
        std = standard[b, :Ls]
        if L > Ls:
            std = torch.cat([std, std[-1:].expand(L - Ls, -1)])
        costs = [((std[s:s + L] - learner[b, :L]) ** 2).sum() for s in range(max(Ls - L, 0) + 1)]
        starts.append(int(torch.stack(costs).argmin()))
    return starts


@pytest.mark.parametrize("seed", range(8))
def test_vectorised_window_search_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, T, D, Ts = 6, 12, 5, 16
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    learner = torch.randn(B, T, D, generator=g) * mask[..., None]
    std_len = torch.randint(2, Ts + 1, (B,), generator=g)
    std_len[1] = 3  # learner longer than its standard: must not crash (the original did)
    standard = torch.randn(B, Ts, D, generator=g)
    assert best_window_start(learner, mask, standard, std_len).tolist() == brute_force_start(learner, mask, standard, std_len)


def test_window_search_finds_a_planted_segment():
    g = torch.Generator().manual_seed(0)
    standard = torch.randn(1, 30, 4, generator=g)
    learner = standard[:, 11:21].clone()
    mask = torch.ones(1, 10, dtype=torch.bool)
    assert best_window_start(learner, mask, standard, torch.tensor([30])).item() == 11


def test_gather_window_repeats_the_last_frame_past_the_end_of_the_standard():
    standard = torch.arange(2 * 5, dtype=torch.float).view(2, 5, 1)  # two standards
    lengths = torch.tensor([5, 3])
    which = torch.tensor([1, 0])
    window = gather_window(standard, lengths, which, torch.tensor([1, 3]), 4)
    assert window[0, :, 0].tolist() == [6.0, 7.0, 7.0, 7.0]  # standard 1 has 3 valid frames: 5, 6, 7
    assert window[1, :, 0].tolist() == [3.0, 4.0, 4.0, 4.0]


def test_fusion_uses_each_samples_own_embedding():
    learner = torch.randn(3, 4, 22, 2)
    standard = torch.randn(3, 4, 22, 2)
    mask = torch.ones(3, 4, dtype=torch.bool)
    # the original subtracted query[0] for every item
    assert torch.equal(fuse_with_standard(learner, standard, mask), standard - learner)  # DIFFERENCE, the default
    fused = fuse_with_standard(learner, standard, mask, "CONCAT")
    assert torch.equal(fused[..., 2:], standard - learner)
    assert torch.equal(fused[..., :2], learner)


# ---- the whole model ----------------------------------------------------------------------------

def model_and_batch(policy, branch=0, pretrain=True, segment="NONE", token_norm=False, fusion="DIFFERENCE"):
    cfg = tiny_config(BRANCH=branch, TASK={"PRETRAIN": pretrain},
                      TRANSFORMATION={"REDUCTION_POLICY": policy, "TOKEN_NORM": token_norm},
                      ALIGNMENT={"REFERENCE_SEGMENT": segment, "FUSION": fusion}, DATA={"STANDARD": "s.pkl"})
    model = tiny_model(cfg, standards=STANDARDS if branch == 1 else None, subtraction_dim=3 if branch == 2 else 0)
    clips = [random_clip(10, seed=1), random_clip(17, seed=2), random_clip(6, seed=3)]
    batch = make_batch(clips, motion_types=["Jab", "Cross", "Jab"], subtraction_dim=3 if branch == 2 else 0)
    return model.eval(), batch


def logits(model, batch, labels):
    tokens, token_mask, _, _ = model.encode(batch)
    return model.t5(inputs_embeds=tokens, attention_mask=token_mask.long(), labels=labels).logits


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("branch, pretrain, token_norm, fusion", [
    (0, True, False, "DIFFERENCE"), (1, False, False, "DIFFERENCE"), (1, False, True, "CONCAT"),
    (1, True, False, "DIFFERENCE"), (2, False, True, "DIFFERENCE")])
def test_padding_does_not_change_logits_or_text(policy, branch, pretrain, token_norm, fusion):
    model, batch = model_and_batch(policy, branch, pretrain, token_norm=token_norm, fusion=fusion)
    if token_norm:  # running statistics off their defaults, so eval-mode normalisation is not the identity
        model.projection.token_norm.norm.running_mean.uniform_(-1, 1)
        model.projection.token_norm.norm.running_var.uniform_(0.5, 2)
    labels = model.codec.encode_targets(["a person walks", "raises the arm", "squats down"])
    with torch.no_grad():
        batched = logits(model, batch, labels)
        for i in range(3):
            alone = logits(model, take(batch, i), labels[i:i + 1])
            assert torch.allclose(batched[i], alone[0], atol=1e-4), f"clip {i}"
    texts, _, _ = model.generate(batch, model_and_batch_gen())
    for i in range(3):
        alone, _, _ = model.generate(take(batch, i), model_and_batch_gen())
        assert alone[0] == texts[i]


def model_and_batch_gen(num_beams=1):
    return tiny_config(GENERATION={"NUM_BEAMS": num_beams, "MAX_LENGTH": 8}).generation


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_by_one_and_strips_the_prompt(num_beams):
    model, batch = model_and_batch("TIME_POOL")
    gen = model_and_batch_gen(num_beams)
    texts, att_node, att_A = model.generate(batch, gen)
    assert att_node.shape == (3, 1, 17, 22) and att_A.shape == (3, 4, 22, 22)
    for i in range(3):
        alone, _, _ = model.generate(take(batch, i), gen)
        assert alone == [texts[i]]
    assert not any(t.startswith("Motion") for t in texts)


def test_generation_starts_from_the_prompt_of_the_task_and_feeds_float_embeddings(monkeypatch):
    model, batch = model_and_batch("TIME_POOL", branch=0, pretrain=True)
    seen = {}
    original = model.t5.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(model.t5, "generate", spy)
    model.generate(batch, model_and_batch_gen())
    assert seen["inputs_embeds"].is_floating_point()  # the original cast them with .long()
    prefix = model.codec.tokenizer.decode(seen["decoder_input_ids"][0, 1:])
    assert prefix.strip() == "Motion Description :"  # the original swapped the prompts at evaluation
    finetune, _ = model_and_batch("TIME_POOL", branch=0, pretrain=False)
    assert finetune.codec.tokenizer.decode(finetune.codec.prompt_ids).strip() == "Motion Instruction :"


def test_pad_label_positions_do_not_change_the_loss():
    model, batch = model_and_batch("TIME_POOL")
    labels = model.codec.encode_targets(["a person walks", "raises the left arm now", "jumps"])
    assert (labels == -100).any()
    wider = torch.cat([labels, torch.full((3, 5), -100)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(batch, labels), model(batch, wider), atol=1e-6)


def test_labels_are_prompt_then_caption_then_eos():
    model, _ = model_and_batch("TIME_POOL", pretrain=False)
    labels = model.codec.encode_targets(["keep your hand at chin"])[0]
    n = len(model.codec.prompt_ids)
    assert labels[:n].tolist() == model.codec.prompt_ids
    assert labels[-1].item() == model.codec.tokenizer.eos_token_id
    assert model.codec.tokenizer.decode(labels[n:-1]).strip() == "keep your hand at chin"


def test_each_distinct_standard_is_embedded_once_per_step_without_grad():
    model, batch = model_and_batch("TIME_POOL", branch=1, pretrain=False)
    model.train()
    calls = []

    def count(module, args):
        calls.append((args[0].shape[0], torch.is_grad_enabled(), module.training))

    handle = model.encoder.register_forward_pre_hook(count)
    labels = model.codec.encode_targets(["a", "b", "c"])
    model(batch, labels).backward()
    handle.remove()
    # one call for the 3 learner clips (train mode, grad), one for the 2 distinct standards (eval, no grad)
    assert sorted(calls) == sorted([(3, True, True), (2, False, False)])
    assert model.encoder.training


def test_pretraining_branch1_reference_is_the_static_first_frame_pose_encoded_without_grad():
    """As the original: the first frame's coordinates held for the clip's length, encoded in eval mode."""
    from dataloaders.features import skeleton_features

    model, batch = model_and_batch("TIME_POOL", branch=1, pretrain=True)
    model.train()
    calls = []
    handle = model.encoder.register_forward_pre_hook(
        lambda module, args: calls.append((args[0].clone(), torch.is_grad_enabled(), module.training)))
    model(batch, model.codec.encode_targets(["a", "b", "c"])).backward()
    handle.remove()
    assert [(grad, training) for _, grad, training in calls] == [(True, True), (False, False)]
    static = batch["coordinates"][:, :1].expand_as(batch["coordinates"])
    torch.testing.assert_close(calls[1][0], skeleton_features(static))
    assert model.encoder.training


def test_token_norm_batch_standardises_each_joint_across_the_clips_of_the_batch_in_training():
    from models.projection import TokenNorm

    norm = TokenNorm(8, "TIME_POOL", "BATCH").train()
    offset = torch.randn(1, 22, 8) * 10  # a large per-joint offset shared by every clip
    tokens = offset + torch.randn(16, 22, 8) * 0.1
    out = norm(tokens, torch.ones(16, 22, dtype=torch.bool))
    torch.testing.assert_close(out.mean(0), torch.zeros(22, 8), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(22, 8), atol=1e-2, rtol=0)


def test_token_norm_running_standardises_each_joint_across_clips_by_running_statistics():
    from models.projection import TokenNorm

    norm = TokenNorm(8, "TIME_POOL", "RUNNING").train()
    g = torch.Generator().manual_seed(0)
    offset = torch.randn(1, 22, 8, generator=g) * 10  # a large per-joint offset shared by every clip
    mask = torch.ones(4, 22, dtype=torch.bool)
    for _ in range(150):  # training batches of 4 clips update the running statistics
        norm(offset + torch.randn(4, 22, 8, generator=g) * 0.1, mask)
    tokens = offset + torch.randn(256, 22, 8, generator=g) * 0.1
    out = norm.eval()(tokens, torch.ones(256, 22, dtype=torch.bool))
    # a moving average over batches of 4 clips: centred and unit-scale up to its own noise (offset: 100 × std)
    assert out.mean(0).abs().mean() < 0.15 and out.mean(0).abs().max() < 0.6
    assert (out.var(0).mean() - 1).abs() < 0.3

    # In training a clip's tokens do not depend on the other clips of its batch: they are normalised by the
    # running statistics as they were before the batch, which the batch then updates.
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    expected = norm.eval()(tokens[:1], mask[:1])[0]
    norm.train()
    with_a = norm(tokens[:4], mask)[0]
    assert not torch.equal(norm.norm.running_mean, before["norm.running_mean"])  # the batch updated them
    norm.load_state_dict(before)
    with_b = norm(torch.cat([tokens[:1], tokens[4:7] + 5.0]), mask)[0]  # very different partners
    assert torch.equal(with_a, expected) and torch.equal(with_b, expected)


def test_data_segment_sets_the_standard_window_start():
    model, batch = model_and_batch("TIME_POOL", branch=1, pretrain=False, segment="ALIGNED")
    batch["segment_start"] = torch.tensor([0, 0, 2])
    batch["std_segment_start"] = torch.tensor([3, 0, 2])
    start = model.encode_with_window_start(batch)[4]
    assert start.tolist() == [3, 0, 0]  # standard frame b − learner frame a, clamped at 0
    assert torch.equal(model.cross_attention(batch, ["a", "b", "c"])[2], start)  # the report's window is the same


def test_every_parameter_of_the_whole_model_gets_a_gradient():
    for branch, pretrain in [(0, True), (1, False), (2, False)]:
        model, batch = model_and_batch("TIME_POOL", branch, pretrain)
        model.train()
        model(batch, model.codec.encode_targets(["a person walks", "jumps", "squats"])).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (branch, missing[:5])


def test_decoded_captions_carry_no_control_characters():
    model, _ = model_and_batch("TIME_POOL")
    codec = model.codec
    ids = codec.tokenizer("a\nperson\x00 walks\u2028now", add_special_tokens=False).input_ids
    generated = torch.tensor([[0] + codec.prompt_ids + ids + [1]])
    assert codec.decode(generated) == ["a person walks now"]


def test_word_dropout_replaces_caption_inputs_only_and_matches_t5s_own_shift_when_off():
    cfg = tiny_config(T5={"WORD_DROPOUT": 0.5})
    model = tiny_model(cfg).train()
    labels = model.codec.encode_targets(["a person walks forward slowly", "jumps"])
    torch.manual_seed(0)
    noisy = model.noisy_decoder_inputs(labels)
    clean = model.t5.prepare_decoder_input_ids_from_labels(labels=labels)  # T5's own shift right
    head = 1 + len(model.codec.prompt_ids)  # start token + prompt: never dropped
    assert torch.equal(noisy[:, :head], clean[:, :head])
    changed = noisy != clean
    assert changed.any() and (noisy[changed] == model.codec.tokenizer.unk_token_id).all()
    assert not (changed & (clean == model.codec.tokenizer.pad_token_id)).any()
    model.word_dropout = 0.0
    model.eval()  # evaluation and generation never see the noise
    batch = make_batch([random_clip(8, seed=1), random_clip(5, seed=2)])
    with torch.no_grad():
        plain = model.t5(inputs_embeds=model.encode(batch)[0], attention_mask=model.encode(batch)[1].long(),
                         labels=labels).loss
        assert torch.equal(model(batch, labels), plain)


def test_token_spread_tells_a_shared_offset_from_clips_that_differ():
    from models.projection import token_spread

    g = torch.Generator().manual_seed(0)
    offset = torch.randn(1, 22, 16, generator=g) * 10
    deviation = torch.randn(8, 22, 16, generator=g)
    mask = torch.ones(8, 22, dtype=torch.bool)
    collapsed = token_spread(offset + 0.01 * deviation, mask)
    assert collapsed["cosine"] > 0.99 and collapsed["spread"] < 0.01
    assert collapsed["centred_cosine"] < 0.1  # centred, the clips are as different as random vectors
    spread = token_spread(offset + 10 * deviation, mask)
    assert spread["cosine"] < 0.7 and spread["spread"] > 0.5


def test_motion_token_stats_counts_projection_units_that_never_fire():
    from dataloaders.datasets import EvalDataset
    from engine.prediction import motion_token_stats

    model = tiny_model(tiny_config())
    clips = [{"video_name": f"c{i}", "coordinates": random_clip(6 + i, seed=i)} for i in range(5)]
    dataset = EvalDataset(clips)
    before = motion_token_stats(model, dataset, torch.device("cpu"), batch_size=2)
    assert set(before) == {"cosine", "centred_cosine", "spread", "dead_units"}
    with torch.no_grad():
        model.projection.mlp[5].bias[:256] = -1e6  # half the second layer's units (a quarter of all) never fire
    after = motion_token_stats(model, dataset, torch.device("cpu"), batch_size=2)
    assert after["dead_units"] > before["dead_units"] and after["dead_units"] >= 0.25
    assert model.training  # the mode is restored


def _caption_nll(model, tokens, mask, labels) -> torch.Tensor:
    """Mean NLL per caption token (prompt excluded) of each row, written out independently of the model."""
    logits = model.t5(inputs_embeds=tokens, attention_mask=mask.long(), labels=labels).logits
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    caption = labels != -100
    caption[:, : len(model.codec.prompt_ids)] = False
    return (nll * caption).sum(1) / caption.sum(1)


def test_other_clip_index_pairs_each_sample_with_the_next_other_clip():
    other, distinct = other_clip_index(["a", "a", "b", "c", "c"])
    assert other.tolist() == [2, 2, 3, 0, 0] and distinct.all()
    other, distinct = other_clip_index(["a", "a"])
    assert other.tolist() == [0, 1] and not distinct.any()


def test_motion_margin_loss_is_cross_entropy_plus_hinge_on_the_other_clips_motion():
    off = {"DROPOUT": 0.0, "TRANSFORMATION": {"PROJECTION_DROPOUT": 0.0}}
    cfg = tiny_config(T5={"DROPOUT": 0.0, "MOTION_MARGIN": 5.0}, **off)  # 5 nats: every pair is under the margin
    model = tiny_model(cfg).train()
    batch = make_batch([random_clip(8, seed=1), random_clip(6, seed=2), random_clip(7, seed=3)])
    labels = model.codec.encode_targets(["a person walks forward", "jumps", "keep your hand at chin"])
    with torch.no_grad():
        loss = model(batch, labels)
        tokens, mask, _, _ = model.encode(batch)  # train-mode BatchNorm: the same batch gives the same tokens
        plain = model.t5(inputs_embeds=tokens, attention_mask=mask.long(), labels=labels).loss
        own = _caption_nll(model, tokens, mask, labels)
        other = [1, 2, 0]  # each sample is paired with the next clip's motion
        swapped = _caption_nll(model, tokens[other], mask[other], labels)
    hinge = (5.0 - (swapped - own)).clamp(min=0).mean()
    assert hinge > 0
    torch.testing.assert_close(loss, plain + hinge)

    batch["video_names"] = ["clip0", "clip0", "clip2"]  # two labels of one clip: both take clip2's motion
    with torch.no_grad():
        loss = model(batch, labels)
        swapped = _caption_nll(model, tokens[[2, 2, 0]], mask[[2, 2, 0]], labels)
    torch.testing.assert_close(loss, plain + (5.0 - (swapped - own)).clamp(min=0).mean())

    batch["video_names"] = ["clip0"] * 3  # one clip only: no other motion, no margin term
    with torch.no_grad():
        torch.testing.assert_close(model(batch, labels), plain)

    assert_evaluation_loss_is_plain_cross_entropy(model, batch, labels)



def _assert_auxiliary_loss_trains_its_head_and_the_encoder(model, batch, labels, auxiliary, head):
    """`auxiliary(hidden, mask, labels)` alone, over T5's encoder output, trains its `head` and the skeleton encoder."""
    model.train().zero_grad()
    tokens, mask, _, _ = model.encode(batch)
    hidden = model.t5.encoder(inputs_embeds=tokens, attention_mask=mask.long()).last_hidden_state
    auxiliary(hidden, mask, labels).backward()
    assert head.weight.grad.abs().sum() > 0 and model.encoder.input_bn.weight.grad.abs().sum() > 0


def _word_bag_nll(model, hidden, mask, labels) -> torch.Tensor:
    """The word-bag loss written out with loops: each caption's words (after the prompt, no eos) as a
    distribution, against the head's softmax over the mean encoder output."""
    total = 0.0
    for b in range(len(labels)):
        pooled = hidden[b, mask[b]].mean(0)
        log_probs = torch.log_softmax(model.word_bag(pooled), dim=-1)
        words = [t for t in labels[b, len(model.codec.prompt_ids):].tolist()
                 if t != -100 and t != model.codec.tokenizer.eos_token_id]
        total = total - sum(log_probs[t] for t in words) / len(words)
    return total / len(labels)


def test_word_bag_loss_is_cross_entropy_plus_the_weighted_word_distribution_loss():
    off = {"DROPOUT": 0.0, "TRANSFORMATION": {"PROJECTION_DROPOUT": 0.0}}
    model = tiny_model(tiny_config(T5={"DROPOUT": 0.0, "WORD_BAG": 0.5}, **off)).train()
    batch = make_batch([random_clip(8, seed=1), random_clip(6, seed=2), random_clip(7, seed=3)])
    labels = model.codec.encode_targets(["a person walks forward walks", "jumps", "keep your hand at chin"])
    _assert_auxiliary_loss_trains_its_head_and_the_encoder(model, batch, labels, model.word_bag_loss, model.word_bag)
    assert_training_loss_is_cross_entropy_plus(
        model.train(), batch, labels, 0.5, lambda hidden, mask: _word_bag_nll(model, hidden, mask, labels), floor=1.0)


def _contrastive_loss_by_hand(model, hidden, mask, captions) -> torch.Tensor:
    """CLIP's loss written out per pair: each caption encoded alone (no padding), pooled by plain means."""
    head = model.contrastive
    words = [model.codec.tokenizer(c, add_special_tokens=False).input_ids for c in captions]
    m = [torch.nn.functional.normalize(head.motion_head(hidden[b, mask[b]].mean(0)), dim=0) for b in range(len(hidden))]
    c = [torch.nn.functional.normalize(head.caption_head(
        model.t5.encoder(input_ids=torch.tensor([w])).last_hidden_state[0].mean(0)), dim=0) for w in words]
    scale = head.logit_scale.exp()
    total = 0.0
    for i in range(len(captions)):
        row = torch.stack([scale * m[i] @ c[j] for j in range(len(captions))])  # motion i against every caption
        col = torch.stack([scale * m[j] @ c[i] for j in range(len(captions))])  # caption i against every motion
        total = total - (torch.log_softmax(row, 0)[i] + torch.log_softmax(col, 0)[i]) / 2
    return total / len(captions)


def test_contrastive_loss_is_cross_entropy_plus_the_weighted_clip_loss():
    off = {"DROPOUT": 0.0, "TRANSFORMATION": {"PROJECTION_DROPOUT": 0.0}}
    model = tiny_model(tiny_config(T5={"DROPOUT": 0.0, "CONTRASTIVE": 0.5}, **off)).train()
    clips = [random_clip(8, seed=1), random_clip(6, seed=2), random_clip(7, seed=3), random_clip(5, seed=4)]
    captions = ["a person walks forward walks", "jumps", "keep your hand at chin", "jumps"]
    batch = make_batch(clips)
    labels = model.codec.encode_targets(captions)
    _assert_auxiliary_loss_trains_its_head_and_the_encoder(model, batch, labels, model.contrastive_loss,
                                                           model.contrastive.motion_head)
    assert_training_loss_is_cross_entropy_plus(
        model.train(), batch, labels, 0.5, lambda hidden, mask: _contrastive_loss_by_hand(model, hidden, mask, captions),
        floor=0.5)


def test_default_model_has_no_contrastive_heads():
    model = tiny_model(tiny_config())
    assert model.contrastive is None and not any("contrastive" in n for n, _ in model.named_parameters())


def test_default_model_has_no_word_bag_head():
    model = tiny_model(tiny_config())
    assert model.word_bag is None and not any("word_bag" in n for n, _ in model.named_parameters())

@pytest.mark.slow  # four models
@pytest.mark.parametrize("branch, pretrain", [(0, True), (1, False)])
def test_canonical_facing_makes_the_tokens_independent_of_the_camera_heading(branch, pretrain):
    from tests.test_data import _turn_about_y

    clips = [random_clip(10, seed=1), random_clip(7, seed=2)]
    turned = [_turn_about_y(c, 75.0) for c in clips[:1]] + [_turn_about_y(c, -160.0) for c in clips[1:]]
    tokens = {}
    for facing in (False, True):
        cfg = tiny_config(BRANCH=branch, TASK={"PRETRAIN": pretrain},
                          TRANSFORMATION={"CANONICAL_FACING": facing})
        model = tiny_model(cfg, standards=STANDARDS).eval()
        # the standards are filmed from another side than the clips: facing forward removes that too
        if branch == 1:
            model.set_standards({k: _turn_about_y(v, 120.0) for k, v in STANDARDS.items()})
        with torch.no_grad():
            a = model.encode(make_batch(clips, motion_types=["Jab", "Cross"]))[0]
            if branch == 1:
                model.set_standards(STANDARDS)
            b = model.encode(make_batch(turned, motion_types=["Jab", "Cross"]))[0]
        tokens[facing] = (a, b)
    torch.testing.assert_close(*tokens[True], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(*tokens[False], atol=1e-4, rtol=1e-4)  # camera coordinates: the heading shows


def test_generation_builds_no_autograd_graph():
    """Generation (and the report's attention passes) run without gradients, whoever calls them."""
    model = tiny_model(tiny_config(BRANCH=1, TASK={"PRETRAIN": False}), standards=STANDARDS).eval()
    batch = make_batch([random_clip(8, seed=1), random_clip(6, seed=2)], motion_types=["Jab", "Cross"])
    _, att_node, att_A = model.generate(batch)
    assert not att_node.requires_grad and not att_A.requires_grad
    _, attention, starts = model.cross_attention(batch, ["punch", "chin"])
    assert not attention.requires_grad and not starts.requires_grad


# ---- guided decoding ----------------------------------------------------------------------------

def guided_model(token_norm=False):
    cfg = tiny_config(BRANCH=1, TASK={"PRETRAIN": False}, TRANSFORMATION={"TOKEN_NORM": token_norm},
                      DATA={"STANDARD": "s.pkl"})
    return tiny_model(cfg, standards=STANDARDS).eval()


def test_the_motion_free_input_is_a_learner_who_moves_exactly_as_the_standard():
    model = guided_model()
    batch = make_batch([STANDARDS["Jab"], random_clip(9, seed=4)], motion_types=["Jab", "Jab"])
    with torch.no_grad():
        tokens, mask, _, _ = model.encode(batch)  # clip 0 is the Jab standard itself: the window search finds it
        free, free_mask = model.motion_free_tokens(batch)
    assert torch.equal(mask, free_mask)
    assert torch.allclose(tokens[0][mask[0]], free[0][mask[0]], atol=1e-5)
    assert not torch.allclose(tokens[1][mask[1]], free[1][mask[1]], atol=1e-3)  # another motion differs


@pytest.mark.parametrize("beams", [1, 3])
def test_guided_scores_add_w_times_the_log_ratio_to_the_motion_free_input(beams):
    import torch.nn.functional as F

    model = guided_model(token_norm=True)
    batch = make_batch([random_clip(10, seed=1), random_clip(7, seed=2)], motion_types=["Jab", "Cross"])
    guidance = model.reference_guidance(batch, 0.7)
    ids = model.codec.encode_targets(["keep the chin down", "turn the hip"])[:, :5].clamp(min=0)
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), ids], 1).repeat_interleave(beams, 0)  # start + prefix
    with torch.no_grad():
        tokens, mask, _, _ = model.encode(batch)
        free, free_mask = model.motion_free_tokens(batch)
        rows = torch.arange(2).repeat_interleave(beams)  # generate's rows: each sample's beams in turn
        own = model.t5(inputs_embeds=tokens[rows], attention_mask=mask[rows].long(), decoder_input_ids=ids).logits[:, -1]
        ref = model.t5(inputs_embeds=free[rows], attention_mask=free_mask[rows].long(),
                       decoder_input_ids=ids).logits[:, -1]
        guided = guidance(ids, own)
    expected = 1.7 * F.log_softmax(own, -1) - 0.7 * F.log_softmax(ref, -1)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert not torch.allclose(guided, F.log_softmax(own, -1), atol=1e-3)


@pytest.mark.parametrize("beams", [1, 3])
def test_guided_generation_is_the_same_in_a_batch_and_alone_and_zero_guidance_decodes_as_before(beams):
    import dataclasses

    model = guided_model()
    batch = make_batch([random_clip(10, seed=1), random_clip(17, seed=2), random_clip(6, seed=3)],
                       motion_types=["Jab", "Cross", "Jab"])
    plain = model_and_batch_gen(beams)
    guided = dataclasses.replace(plain, guidance=2.0)
    texts, _, _ = model.generate(batch, guided)
    for i in range(3):
        assert model.generate(take(batch, i), guided)[0] == [texts[i]]
    off = model.generate(batch, dataclasses.replace(plain, guidance=0.0))[0]
    assert off == model.generate(batch, plain)[0]
    assert texts != off  # the guidance reaches the search
