"""The CUDA paths (AMP, NCCL, SyncBatchNorm, the CLI on a GPU): skipped on machines without a CUDA GPU.

CI has no GPU; these ran on a lent H200 (README, "Measured numbers"). Run them with
`python -m pytest -q tests/test_cuda.py` on any CUDA machine.
"""
from __future__ import annotations

import pytest
import torch

from engine.prediction import move_batch
from tests.cli_helpers import checkpoint_files, explain, load_final, read_json, run_train, tiny_data, write_experiment
from tests.helpers import take
from tests.test_model import model_and_batch

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.timeout(300)]

CUDA = torch.device("cuda", 0)
TEXTS = ["a person walks", "raises the arm", "squats down"]


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 convolutions/matmuls would make fp32 comparisons loose: off for these tests, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_model_and_batch(branch=1, pretrain=False):
    model, batch = model_and_batch("TIME_POOL", branch=branch, pretrain=pretrain)
    return model.to(CUDA), batch


def test_padding_invariance_and_batched_generation_hold_on_cuda():
    model, batch = cuda_model_and_batch()
    labels = model.codec.encode_targets(TEXTS).to(CUDA)
    with torch.no_grad():
        tokens, token_mask, _, _ = model.encode(move_batch(batch, CUDA))
        batched = model.t5(inputs_embeds=tokens, attention_mask=token_mask.long(), labels=labels).logits
        for i in range(3):
            one = move_batch(take(batch, i), CUDA)
            t, m, _, _ = model.encode(one)
            alone = model.t5(inputs_embeds=t, attention_mask=m.long(), labels=labels[i:i + 1]).logits
            assert torch.allclose(batched[i], alone[0], atol=1e-4), f"clip {i}"
    gen = model_and_batch_gen_cfg()
    texts, _, _ = model.generate(move_batch(batch, CUDA), gen)
    for i in range(3):
        alone, _, _ = model.generate(move_batch(take(batch, i), CUDA), gen)
        assert alone == [texts[i]]


def model_and_batch_gen_cfg(num_beams=3):
    from tests.helpers import tiny_config

    return tiny_config(GENERATION={"NUM_BEAMS": num_beams, "MAX_LENGTH": 8}).generation


def test_cuda_matches_cpu_in_fp32():
    model, batch = model_and_batch("TIME_POOL", branch=1, pretrain=False)
    labels = model.codec.encode_targets(TEXTS)
    with torch.no_grad():
        cpu = model(batch, labels).item()
        gpu = model.to(CUDA)(move_batch(batch, CUDA), labels.to(CUDA)).item()
    assert abs(cpu - gpu) <= 1e-4 * max(1.0, abs(cpu)), (cpu, gpu)


def test_bf16_autocast_loss_is_close_to_fp32_and_gradients_are_finite():
    model, batch = cuda_model_and_batch()
    model.train()
    batch, labels = move_batch(batch, CUDA), model.codec.encode_targets(TEXTS).to(CUDA)
    torch.manual_seed(0)
    fp32 = model(batch, labels)
    torch.manual_seed(0)  # same dropout masks
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model(batch, labels)
    assert bf16.dtype == torch.float32  # the loss is computed in fp32 under autocast
    assert abs(bf16.item() - fp32.item()) <= 3e-2 * abs(fp32.item()), (bf16.item(), fp32.item())
    bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fp16_with_grad_scaler_learns_a_fixed_batch():
    model, batch = cuda_model_and_batch()
    model.train()
    batch, labels = move_batch(batch, CUDA), model.codec.encode_targets(TEXTS).to(CUDA)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(batch, labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(map(lambda x: x == x, losses)), losses  # no NaN
    assert losses[-1] < 0.7 * losses[0], losses


def test_syncbatchnorm_and_ddp_on_a_one_rank_nccl_group(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from engine.distributed import all_gather_objects, all_reduce_sum

    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1,
                            device_id=CUDA)
    try:
        model, batch = cuda_model_and_batch()
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        ddp = DDP(model, device_ids=[0])
        loss = ddp(move_batch(batch, CUDA), model.codec.encode_targets(TEXTS).to(CUDA))
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                            if p.grad is not None)
        assert all_reduce_sum(torch.tensor([2.0], device=CUDA)).item() == 2.0
        assert all_gather_objects({"rank": 0}) == [{"rank": 0}]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cli_trains_on_the_gpu_in_bf16_and_resumes(tmp_path):
    data = tiny_data(tmp_path / "data")
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 2})
    res = run_train(cfg, nproc=1)
    assert res.returncode == 0, explain(res)
    log = (cfg.parent / "train.log").read_text()
    assert "cuda" in log and "bf16" in log, log[-2000:]
    state = load_final(cfg.parent / "pretrain_checkpoints")
    assert state["epoch"] == 2 and "cuda" in state["rng"][0]
    assert read_json(cfg.parent / "jsons" / "metrics_epoch2.json")["CIDEr"] >= 0
    again = run_train(cfg, "--set", "OPTIMIZER.MAX_EPOCH=3", nproc=1)
    assert again.returncode == 0, explain(again)
    assert checkpoint_files(cfg.parent / "pretrain_checkpoints")[-1] == "epoch_0003.pt"
