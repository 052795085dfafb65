"""Skeleton graph, ST-GC block and STA-GCN encoder, as published. CPU, tiny sizes."""
import numpy as np
import pytest
import torch

from models.graph import SMPL_EDGES, SMPL_PARENTS, build_spatial_adjacency
from models.stagcn import STAGCN

V = 22


def tiny_encoder(seed=0):
    """hidden 4 / out 16, with random BN statistics so eval-mode BN shifts padded frames off zero."""
    torch.manual_seed(seed)
    model = STAGCN(hidden_channel=4, out_channel=16)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def features(B, T, seed):
    return torch.randn(B, 6, T, V, generator=torch.Generator().manual_seed(seed))


# ---- graph -------------------------------------------------------------------------------------

def test_adjacency_has_seven_kernels_of_22_nodes():
    assert build_spatial_adjacency().shape == (7, V, V)


def test_hop1_edges_are_exactly_the_smpl_parent_pairs():
    A = build_spatial_adjacency()
    hop1 = (A[1] + A[2]) > 0
    found = {(v, w) for v, w in zip(*np.nonzero(hop1))}
    expected = {(c, p) for c, p in SMPL_EDGES} | {(p, c) for c, p in SMPL_EDGES}
    assert len(SMPL_EDGES) == 21 and found == expected
    # anatomy the shifted table (the original's: edge (-1, 0) wrapping to joint 21) gets wrong
    assert {(1, 0), (2, 0), (3, 0), (15, 12), (20, 18), (21, 19)} <= set(SMPL_EDGES)
    assert not hop1[21, 0] and not hop1[0, 21]
    assert hop1[0].sum() == 3  # pelvis: two hips and the spine


def test_root_kernel_is_diagonal_and_hops_2_3_are_not_edges():
    A = build_spatial_adjacency()
    assert np.count_nonzero(A[0] - np.diag(np.diag(A[0]))) == 0 and (np.diag(A[0]) > 0).all()
    hop23 = (A[3:].sum(0) > 0)
    assert not (hop23 & ((A[1] + A[2]) > 0)).any() and not np.diag(hop23).any()


def test_columns_are_normalised():
    # normalize_digraph: A · D^-1 -> every node's incoming weights over all kernels sum to 1
    np.testing.assert_allclose(build_spatial_adjacency().sum(axis=(0, 1)), np.ones(V), atol=1e-6)


def test_edges_split_by_distance_to_pelvis_truncated_at_max_hop_like_reference_stgcn():
    A = build_spatial_adjacency()
    # A[k, v, w]: what w gathers from v. Knee 4 (2 hops) gathers hip 1 (1 hop, nearer the pelvis) in the
    # "nearer" kernel; the hip gathers the knee in the "same or farther" one
    assert A[2, 1, 4] > 0 and A[1, 1, 4] == 0
    assert A[1, 4, 1] > 0 and A[2, 4, 1] == 0
    # elbow 18 and shoulder 16 are both > 3 hops away: the reference code's inf distances make them
    # "equally far", so both directions fall into the same kernel (fidelity to the published model)
    assert A[1, 16, 18] > 0 and A[1, 18, 16] > 0 and A[2, 16, 18] == 0 and A[2, 18, 16] == 0


def test_parents_table_is_zero_indexed():
    assert SMPL_PARENTS[0] == -1 and min(SMPL_PARENTS[1:]) == 0 and len(SMPL_PARENTS) == V


# ---- encoder -----------------------------------------------------------------------------------

def test_parameter_count_matches_design():
    assert sum(p.numel() for p in STAGCN(hidden_channel=32, out_channel=128).parameters()) == 7_113_726


@pytest.mark.parametrize("hidden, out", [(4, 16), (32, 128)])
def test_every_parameter_gets_a_gradient_from_the_embedding(hidden, out):
    torch.manual_seed(0)
    model = STAGCN(hidden_channel=hidden, out_channel=out).train()
    frame_mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    embedding, _, _ = model(features(2, 8, seed=1), frame_mask)
    # random weights: a plain sum of BatchNorm outputs has zero gradient in train mode
    (embedding * torch.randn_like(embedding)).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_output_shapes():
    model = tiny_encoder()
    embedding, att_node, att_A = model(features(2, 7, seed=1), torch.ones(2, 7, dtype=torch.bool))
    assert embedding.shape == (2, 7, V, 64)
    assert att_node.shape == (2, 1, 7, V)
    assert att_A.shape == (2, 4, V, V)


def test_padding_does_not_change_outputs():
    model = tiny_encoder()
    short, long = features(1, 10, seed=1), features(1, 16, seed=2)
    padded = torch.cat([short, torch.randn(1, 6, 6, V) * 5], dim=2)  # garbage in padded frames
    frame_mask = torch.ones(2, 16, dtype=torch.bool)
    frame_mask[0, 10:] = False
    with torch.no_grad():
        alone = model(short, torch.ones(1, 10, dtype=torch.bool))
        batched = model(torch.cat([padded, long]), frame_mask)
    torch.testing.assert_close(batched[0][0, :10], alone[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1][0, :, :10], alone[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[2][0], alone[2][0], atol=1e-5, rtol=1e-5)
    # padded frames carry nothing downstream: zero attention and zero embedding
    assert (batched[1][0, :, 10:] == 0).all() and (batched[0][0, 10:] == 0).all()


def test_batch_equals_single_clips():
    model = tiny_encoder()
    clips = features(3, 12, seed=3)
    frame_mask = torch.ones(3, 12, dtype=torch.bool)
    with torch.no_grad():
        batched = model(clips, frame_mask)
        for i in range(3):
            single = model(clips[i:i + 1], frame_mask[i:i + 1])
            for b, s in zip(batched, single):
                torch.testing.assert_close(b[i:i + 1], s, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_sample", [False, True])
def test_graph_first_convolution_equals_the_reference_einsum_with_gradients(per_sample):
    """STGCBlock aggregates over the graph before its 1×1 conv (faster); the result and every gradient must
    equal the published order: conv to C_out × K channels, then einsum with A (⊙ M) or the per-sample graphs."""
    from models.stgcn import STGCBlock

    torch.manual_seed(0)
    K, c_in, c_out, B, T = (4, 5, 6, 3, 7) if per_sample else (7, 5, 6, 3, 7)
    block = STGCBlock(c_in, c_out, K, learnable_mask=not per_sample)
    if not per_sample:
        block.mask.data.uniform_(0.5, 1.5)
    x = torch.randn(B, c_in, T, V, requires_grad=True)
    A = torch.rand(B, K, V, V, requires_grad=True) if per_sample else torch.rand(K, V, V)
    params = [x, block.graph_conv.weight, block.graph_conv.bias] + ([A] if per_sample else [block.mask])

    y = block.graph_conv(x).view(B, K, c_out, T, V)
    ref = (torch.einsum("nkctv,nkvw->nctw", y, A) if per_sample
           else torch.einsum("nkctv,kvw->nctw", y, A * block.mask))
    out = block.graph_convolution(x, A)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ref, params, g), torch.autograd.grad(out, params, g)):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("c_in,c_out", [(6, 6), (5, 6)])  # identity residual, and 1×1 conv + BN residual
def test_block_follows_the_published_order_relu_before_the_residual_add(c_in, c_out):
    """out = ReLU(Dropout(BN(tconv(ReLU(BN(gcn(x))))))) + residual(x): no activation after the add, so
    outputs can be negative (a ReLU after the add would make every value >= 0)."""
    from models.stgcn import STGCBlock

    torch.manual_seed(0)
    block = STGCBlock(c_in, c_out, 7).eval()
    for module in block.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.bias.data.uniform_(-0.5, 0.5)
    A = torch.from_numpy(build_spatial_adjacency(V))
    x = torch.randn(2, c_in, 9, V)
    mask = torch.ones(2, 1, 9, 1)
    with torch.no_grad():
        h = torch.relu(block.graph_bn(torch.einsum("nkctv,kvw->nctw",
                                                   block.graph_conv(x).view(2, 7, c_out, 9, V), A * block.mask)))
        temporal = torch.relu(block.temporal_bn(block.temporal_conv(h)))
        residual = x if c_in == c_out else block.residual[1](block.residual[0](x))
        expected = temporal + residual
        out = block(x, mask, A)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out < 0).any()
