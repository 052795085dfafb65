"""LoRA adapters (peft) and T5.FREEZE: adapters start as the identity, only what should train trains, the graph
convolution applies its adapter, merging keeps the outputs, finetuning loads plain weights under adapters; and a
run from a local T5 folder with adapters resumes exactly and exports a plain model that captions the same."""
from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from engine.optim import build_optimizer
from models.lora import freeze_parameters, merge_adapters
from tests.helpers import make_batch, random_clip, tiny_config, tiny_model

STANDARDS = {"Jab": random_clip(14, seed=100), "Cross": random_clip(9, seed=101)}
LORA = {"RANK": 4, "ALPHA": 8.0, "DROPOUT": 0.0, "TARGETS": "q,v,wi", "STAGCN": True}


def lora_config(freeze: str = "ALL_BUT_LORA", **lora):
    return tiny_config(BRANCH=1, TASK={"PRETRAIN": False},
                       T5={"LORA": {**LORA, **lora}, "FREEZE": freeze})


def batch_and_labels(model):
    batch = make_batch([random_clip(10, seed=1), random_clip(7, seed=2)], motion_types=["Jab", "Cross"])
    return batch, model.codec.encode_targets(["keep your hand at chin", "punch"])


def perturb_adapters(model, seed: int = 0) -> None:
    """Non-zero B matrices, as after training (B starts at 0, which would hide every mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.slow  # builds several models with adapters
def test_adapters_sit_on_the_named_layers_and_start_as_the_identity():
    plain = tiny_model(tiny_config(BRANCH=1, TASK={"PRETRAIN": False}), standards=STANDARDS).eval()
    adapted = tiny_model(lora_config(), standards=STANDARDS).eval()
    names = [n for n, _ in adapted.named_parameters() if "lora_A" in n]
    assert any(".SelfAttention.q." in n for n in names) and any(".EncDecAttention.v." in n for n in names)
    assert any(".DenseReluDense.wi." in n for n in names) and not any(".SelfAttention.k." in n for n in names)
    assert any(n.startswith("encoder.") and ".graph_conv." in n for n in names)
    assert any(n.startswith("encoder.") and ".temporal_conv." in n for n in names)
    with torch.no_grad():
        batch, labels = batch_and_labels(plain)
        torch.testing.assert_close(adapted(batch, labels), plain(batch, labels), rtol=0, atol=0)


@pytest.mark.slow  # builds several models with adapters
def test_freeze_all_but_lora_trains_the_adapters_the_stagcn_and_the_projection_only():
    model = tiny_model(lora_config(), standards=STANDARDS)
    share = freeze_parameters(model, "ALL_BUT_LORA")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert share["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable) < share["total"]
    optimizer = build_optimizer(model, lora_config().OPTIMIZER)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    model.train()
    batch, labels = batch_and_labels(model)
    model(batch, labels).backward()
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        if name.startswith("t5.") and "lora_" not in name:
            assert not moved and name not in trainable, name  # T5 itself stays as it was
        elif ".base_layer." in name:
            assert not moved and name not in trainable, name  # an adapted STA-GCN conv keeps its weights
        elif "lora_B" in name or name.startswith("projection.mlp"):
            assert moved, name


def test_freeze_encoder_fixes_the_t5_encoder_stack_only():
    model = tiny_model(tiny_config(T5={"FREEZE": "ENCODER"}))
    freeze_parameters(model, "ENCODER")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("t5.encoder.")} and frozen
    assert model.t5.shared.weight.requires_grad  # the decoder's embedding (tied) still trains


@pytest.mark.slow  # builds several models with adapters
def test_merging_keeps_the_outputs_and_gives_the_plain_models_parameters():
    adapted = tiny_model(lora_config(), standards=STANDARDS).eval()
    perturb_adapters(adapted)
    batch, labels = batch_and_labels(adapted)
    with torch.no_grad():
        before = adapted(batch, labels)
        merge_adapters(adapted)
        after = adapted(batch, labels)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    plain = tiny_model(tiny_config(BRANCH=1, TASK={"PRETRAIN": False}), standards=STANDARDS)
    assert list(adapted.state_dict()) == list(plain.state_dict())


@pytest.mark.slow  # builds several models with adapters
def test_the_graph_convolution_applies_its_adapter():
    """The block reads the graph conv's weight directly (not by calling it): its adapter must still count."""
    adapted = tiny_model(lora_config("NONE", TARGETS=""), standards=STANDARDS).eval()  # the STA-GCN's only
    perturb_adapters(adapted)
    batch, _ = batch_and_labels(adapted)
    from dataloaders.features import skeleton_features

    feats = skeleton_features(batch["coordinates"])
    block = adapted.encoder.joint_stream[0]
    with torch.no_grad():
        out = adapted.encoder(feats, batch["frame_mask"])[0]
        block.graph_conv.lora_B["default"].weight.zero_()
        without = adapted.encoder(feats, batch["frame_mask"])[0]
    assert not torch.allclose(out, without)


@pytest.mark.slow  # builds several models with adapters
def test_finetuning_loads_plain_pretrained_weights_under_the_adapters():
    from engine.weights import load_pretrained_weights

    pretrained = tiny_model(tiny_config(), seed=3)  # no adapters, another seed
    state = {"model": pretrained.state_dict()}
    adapted = tiny_model(lora_config(), standards=STANDARDS)
    load_pretrained_weights(adapted, state, "pretrain.pt")
    own = adapted.state_dict()
    q = "t5.encoder.block.0.layer.0.SelfAttention.q"
    assert torch.equal(own[f"{q}.base_layer.weight"], state["model"][f"{q}.weight"])
    assert torch.equal(own["encoder.joint_stream.0.graph_conv.base_layer.weight"],
                       state["model"]["encoder.joint_stream.0.graph_conv.weight"])
    assert torch.equal(own[f"{q}.lora_B.default.weight"], torch.zeros_like(own[f"{q}.lora_B.default.weight"]))
    with pytest.raises(UserError, match="carry LoRA adapters and this config has none"):
        load_pretrained_weights(tiny_model(tiny_config()), {"model": adapted.state_dict()}, "lora.pt")


def test_lora_keys_are_checked():
    with pytest.raises(UserError, match=r"T5\.LORA\.TARGETS='q,query': unknown T5 layer\(s\) query"):
        tiny_config(T5={"LORA": {"RANK": 2, "TARGETS": "q,query"}})
    with pytest.raises(UserError, match=r"T5\.FREEZE=ALL_BUT_LORA: T5 has no adapters"):
        tiny_config(T5={"FREEZE": "ALL_BUT_LORA"})
    assert tiny_config(T5={"LORA": {"RANK": 0}}).lora() == {}


# ---- a run with adapters on a local T5 folder --------------------------------------------------------

@pytest.mark.slow
def test_a_lora_run_on_a_local_t5_resumes_exactly_keeps_t5_and_exports_a_plain_model(tmp_path, capsys, one_thread,
                                                                                       restore_logging):
    import shutil

    import evaluate
    import train_t5_stagcn  # the entry points' main(), in this process: five runs without five start-ups

    from dataloaders.formats import load_clips
    from engine.config_loader import load_config
    from engine.export import load_exported
    from engine.prediction import captions_of, load_inference_clips
    from engine.weights import load_model, resolve_checkpoint
    from tests.cli_helpers import checkpoint_files, load_final, max_param_diff, tiny_data, write_experiment
    from tests.test_export import captions_of as label_texts
    from tests.test_export import save_local_t5
    from transformers import T5ForConditionalGeneration

    data = tiny_data(tmp_path / "data")
    t5_dir = save_local_t5(tmp_path / "t5", label_texts(load_clips(data["pretrain_train"])))
    sections = dict(T5={"NAME": str(t5_dir), "LORA": {**LORA, "DROPOUT": 0.1}, "FREEZE": "ALL_BUT_LORA"},
                    TRAIN={"SANITY_EVAL": False}, EVAL={"SCORE": False, "METRIC_PERIOD": 100})  # no scoring needed
    straight = write_experiment(tmp_path / "straight", data, OPTIMIZER={"MAX_EPOCH": 2}, **sections)
    assert train_t5_stagcn.main(["--cfg_file", str(straight), "--dry-run"]) == 0
    assert "trainable of" in capsys.readouterr().out
    assert train_t5_stagcn.main(["--cfg_file", str(straight)]) == 0
    resumed = write_experiment(tmp_path / "resumed", data, OPTIMIZER={"MAX_EPOCH": 1}, **sections)
    assert train_t5_stagcn.main(["--cfg_file", str(resumed)]) == 0
    capsys.readouterr()
    assert train_t5_stagcn.main(["--cfg_file", str(resumed), "--set", "OPTIMIZER.MAX_EPOCH=2"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert checkpoint_files(tmp_path / "resumed" / "pretrain_checkpoints")[-1] == "epoch_0002.pt"
    a, b = load_final(tmp_path / "straight" / "pretrain_checkpoints"), load_final(tmp_path / "resumed" / "pretrain_checkpoints")
    assert max_param_diff(a["model"], b["model"]) == 0.0  # resume with adapters is exact

    base = T5ForConditionalGeneration.from_pretrained(str(t5_dir)).state_dict()
    q = "encoder.block.0.layer.0.SelfAttention.q"
    assert torch.equal(a["model"][f"t5.{q}.base_layer.weight"], base[f"{q}.weight"])  # T5 itself never moved
    assert not torch.equal(a["model"][f"t5.{q}.lora_B.default.weight"], torch.zeros_like(base[f"{q}.weight"][:, :4]))

    shutil.move(str(t5_dir), str(tmp_path / "t5_moved"))  # an export needs neither the folder nor peft's names
    folder = tmp_path / "export"
    assert evaluate.main(["--exp", str(straight.parent), "--checkpoint", "latest", "--export", str(folder)]) == 0
    loaded = load_exported(folder)
    assert loaded.config.lora == {} and not any("lora_" in k or "base_layer" in k for k in loaded.state_dict())
    cfg = load_config(straight)
    original, _ = load_model(cfg, resolve_checkpoint(cfg, "latest"), torch.device("cpu"))
    clips, segment = load_inference_clips(cfg, cfg.path(cfg.DATA.TEST))
    expected = captions_of(original, clips[:4], cfg, segment, 4, torch.device("cpu"))
    assert captions_of(loaded, clips[:4], cfg, segment, 4, torch.device("cpu")) == expected
