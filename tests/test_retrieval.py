"""Retrieval prompt (RETRIEVAL.NEIGHBOURS): which training clips are retrieved, and how their labels reach T5."""
import pytest
import torch

from dataloaders.datasets import EvalDataset, TrainDataset, collate
from dataloaders.retrieval import SEPARATOR, nearest_training_clips, retrieval_prompts
from common.errors import UserError
from models.motion2text import pack_sequences
from tests.helpers import make_batch, random_clip, take, tiny_config, tiny_model
from tests.test_baselines import clip


def persons_corpus():
    """Person p has 3 clips that are small perturbations of one motion: its own clips are its nearest."""
    clips = []
    for p in range(4):
        base = clip(f"{p}_x_0", seed=p)["coordinates"]
        for i in range(3):
            g = torch.Generator().manual_seed(100 * p + i)
            clips.append({"video_name": f"{p}_view_{i}", "motion_type": "Jab" if p < 3 else "Cross",
                          "labels": [f"label {p}{i}a", f"label {p}{i}b"],
                          "coordinates": base + 0.01 * torch.randn(base.shape, generator=g)})
    return clips


def test_training_clips_never_retrieve_themselves_and_prefer_their_person():
    clips = persons_corpus()
    nn = nearest_training_clips(clips, clips, k=2)
    for i, row in enumerate(nn):
        assert i not in row
        assert all(clips[j]["video_name"][0] == clips[i]["video_name"][0] for j in row)  # same person first


def test_exclude_person_retrieves_other_persons_of_the_same_technique_only():
    clips = persons_corpus()
    nn = nearest_training_clips(clips, clips, k=10, exclude="PERSON")
    for i, row in enumerate(nn):
        me = clips[i]
        assert all(clips[j]["video_name"][0] != me["video_name"][0] for j in row)
        assert all(clips[j]["motion_type"] == me["motion_type"] for j in row)
    # Jab: 3 persons × 3 clips → 6 clips of other persons; the only Cross person has nobody else.
    assert [len(r) for r in nn] == [6] * 9 + [0] * 3


def test_neighbours_are_sorted_by_distance_and_prompts_join_their_labels():
    clips = persons_corpus()
    query = [dict(clips[4], video_name="new")]  # a copy of person 1's clip 1 under a new name
    row = nearest_training_clips(clips, query, k=3)[0]
    assert row[0] == 4 and len(row) == 3
    d = [torch.dist(clips[j]["coordinates"], clips[4]["coordinates"]) for j in row]
    assert d == sorted(d)
    assert retrieval_prompts(clips, query, k=1) == [SEPARATOR.join(clips[4]["labels"])]
    assert retrieval_prompts(clips, [dict(clips[0], motion_type="Hook")], k=1) == [""]  # no clip of its technique


def test_datasets_and_collate_carry_the_retrieved_text_of_each_clip():
    clips = persons_corpus()[:3]
    texts = retrieval_prompts(clips, clips, k=1)
    train = TrainDataset(clips, retrieved=texts)
    batch = collate([train[i] for i in range(len(train))])
    assert batch["retrieved"] == [texts[0]] * 2 + [texts[1]] * 2 + [texts[2]] * 2  # 2 labels per clip
    assert "retrieved" not in collate([TrainDataset(clips)[0]])
    assert collate([EvalDataset(clips, retrieved=texts)[2]])["retrieved"] == [texts[2]]
    with pytest.raises(ValueError, match="3 clips"):
        EvalDataset(clips, retrieved=texts[:2])


def test_label_index_prompts_and_trains_on_one_label_position():
    clips = persons_corpus()
    query = [dict(clips[4], video_name="new")]
    assert retrieval_prompts(clips, query, k=2, slot=1) == [f"label 11b{SEPARATOR}label 10b"]  # 2 nearest, label 1
    short = [dict(clips[1], labels=["only one"])] + clips[:1]
    assert retrieval_prompts(short, [dict(clips[1], video_name="new")], k=1, slot=1) == [""]  # neighbour lacks it
    aug = [dict(c, augmented_labels=[f"para {c['video_name']} {i}" for i in range(2)]) for c in clips[3:5]]
    ds = TrainDataset(aug, use_augmented_labels=True, retrieved=["p", "q"], label_index=1)
    assert [(ds[i]["text"], ds[i]["retrieved"]) for i in range(len(ds))] == [
        ("label 10b", "p"), ("para 1_view_0 1", "p"), ("label 11b", "q"), ("para 1_view_1 1", "q")]
    assert len(TrainDataset(aug, use_augmented_labels=True)) == 8  # without: every label and paraphrase


def test_label_index_beyond_the_labels_of_a_training_clip_is_a_clear_error():
    from engine.experiment import retrieved_texts, target_label_index

    clips = persons_corpus()  # 2 labels per clip
    cfg = tiny_config(RETRIEVAL={"NEIGHBOURS": 1, "LABEL_INDEX": 1})
    train, test = retrieved_texts(cfg, clips, clips[:2], target_label_index(cfg, clips))
    assert len(train) == len(clips) and len(test) == 2
    assert all(t.startswith("label ") and t.endswith("b") and "|" not in t for t in train)  # its label 1 only
    with pytest.raises(UserError, match=r"LABEL_INDEX=2: 12 training clip\(s\) have no label at that position"):
        target_label_index(tiny_config(RETRIEVAL={"NEIGHBOURS": 1, "LABEL_INDEX": 2}), clips)
    assert retrieved_texts(tiny_config(), clips, clips, None) == (None, None)


def test_data_label_index_trains_on_one_label_position_without_retrieval():
    from engine.experiment import target_label_index

    clips = persons_corpus()  # 2 labels per clip
    assert target_label_index(tiny_config(), clips) is None
    assert target_label_index(tiny_config(DATA={"LABEL_INDEX": 1}), clips) == 1
    assert target_label_index(tiny_config(RETRIEVAL={"NEIGHBOURS": 1, "LABEL_INDEX": 0}), clips) == 0
    assert target_label_index(tiny_config(DATA={"LABEL_INDEX": 0}, RETRIEVAL={"NEIGHBOURS": 1, "LABEL_INDEX": 0}),
                              clips) == 0
    with pytest.raises(UserError, match=r"DATA.LABEL_INDEX=2: 12 training clip\(s\) have no label at that position"):
        target_label_index(tiny_config(DATA={"LABEL_INDEX": 2}), clips)
    with pytest.raises(UserError, match=r"DATA.LABEL_INDEX=1, RETRIEVAL.LABEL_INDEX=0"):
        tiny_config(DATA={"LABEL_INDEX": 1}, RETRIEVAL={"NEIGHBOURS": 1, "LABEL_INDEX": 0})
    with pytest.raises(UserError, match="DATA.LABEL_INDEX"):
        tiny_config(DATA={"LABEL_INDEX": -2})


def test_pack_sequences_puts_valid_rows_first_and_keeps_gradients():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, generator=g, requires_grad=True), torch.randn(3, 6, 5, generator=g)
    a_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    b_mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]).bool()
    out, mask = pack_sequences(a, a_mask, b, b_mask)
    assert out.shape == (3, 8, 5)
    for i in range(3):  # reference: plain Python per sample
        ref = torch.cat([a[i][a_mask[i]], b[i][b_mask[i]]])
        assert torch.equal(out[i, : len(ref)], ref) and mask[i].sum() == len(ref)
        assert torch.all(out[i, len(ref):] == 0)
    out.sum().backward()
    assert torch.equal(a.grad, a_mask[..., None].float().expand_as(a))


def retrieval_model_and_batch(policy="TIME_POOL"):
    cfg = tiny_config(RETRIEVAL={"NEIGHBOURS": 1}, GENERATION={"MAX_LENGTH": 6},
                      TRANSFORMATION={"REDUCTION_POLICY": policy})
    model = tiny_model(cfg).eval()
    batch = make_batch([random_clip(10, seed=1), random_clip(17, seed=2), random_clip(6, seed=3)])
    batch["retrieved"] = ["keep your hand at the chin | a person walks", "", "raises the left arm"]
    return model, batch, cfg


@pytest.mark.parametrize("policy", ["TIME_POOL", "SKELETON_POOL"])
def test_retrieved_text_is_part_of_the_input_and_padding_free(policy):
    model, batch, cfg = retrieval_model_and_batch(policy)
    tokens, mask, _, _ = model.encode(batch)
    n_text = [len(model.codec.tokenizer(t, add_special_tokens=False).input_ids) for t in batch["retrieved"]]
    n_motion = [22] * 3 if policy == "TIME_POOL" else batch["lengths"].tolist()  # per joint / per frame
    assert mask.sum(1).tolist() == [m + n for m, n in zip(n_motion, n_text)]
    labels = model.codec.encode_targets(["a person walks", "raises the arm", "squats down"])
    with torch.no_grad():
        batched = model.t5(inputs_embeds=tokens, attention_mask=mask.long(), labels=labels).logits
        for i in range(3):  # batch-vs-single: the other samples' text lengths change nothing
            t1, m1, _, _ = model.encode(take(batch, i))
            alone = model.t5(inputs_embeds=t1, attention_mask=m1.long(), labels=labels[i:i + 1]).logits
            assert torch.allclose(batched[i], alone[0], atol=1e-4), f"clip {i}"
    texts, _, _ = model.generate(batch, cfg.generation)
    assert [model.generate(take(batch, i), cfg.generation)[0][0] for i in range(3)] == texts
    other = dict(batch, retrieved=["squats down"] * 3)
    with torch.no_grad():
        assert not torch.allclose(model(batch, labels), model(other, labels))  # the text is not ignored


def test_a_retrieval_model_without_retrieved_texts_fails_clearly():
    model, batch, _ = retrieval_model_and_batch()
    del batch["retrieved"]
    with pytest.raises(ValueError, match="RETRIEVAL.NEIGHBOURS"):
        model.encode(batch)


@pytest.mark.parametrize("section, match", [({"NEIGHBOURS": -1}, "RETRIEVAL.NEIGHBOURS"),
                                            ({"EXCLUDE": "VIDEO"}, "RETRIEVAL.EXCLUDE"),
                                            ({"LABEL_INDEX": -2}, "RETRIEVAL.LABEL_INDEX"),
                                            ({"LABEL_INDEX": 1}, "needs RETRIEVAL.NEIGHBOURS")])
def test_bad_retrieval_keys_are_named(section, match):
    with pytest.raises(UserError, match=match):
        tiny_config(RETRIEVAL=section)
