"""STA-GCN skeleton encoder, as published: feature extractor -> attention branch -> perception branch.

    features [B, 6, T, 22] --input BN--> joints [B, 3, ..] -> 5 blocks --+
                                         bones  [B, 3, ..] -> 5 blocks --+-> feature [B, o, T, 22]
    feature -> attention: 5 blocks (fixed A) -> att [B, 2o, T, 22] -> head -> att_node, att_A
    feature * att_node -> perception: 5 blocks (per-sample att_A) -> per [B, 2o, T, 22]
    embedding = concat(per, att) -> [B, T, 22, 4o]

h = hidden_channel (32), o = out_channel (128) = 4h. At (32, 128): 7,113,726 parameters, all trained.
"""
import torch
import torch.nn.functional as F
from torch import nn

from models.graph import build_spatial_adjacency
from models.stgcn import STGCBlock

NUM_ATT_GRAPHS = 4  # learned per-sample graphs used by the perception branch
ATT_CHANNELS = 1024  # width of the attention head


def _blocks(widths: list[int], num_kernels: int, dropout: float, learnable_mask: bool,
            plain_first: bool = False) -> nn.ModuleList:
    """ST-GC blocks for (in, out) widths; plain_first: the first block has no residual and no dropout."""
    blocks = []
    for i, (c_in, c_out) in enumerate(widths):
        plain = plain_first and i == 0
        blocks.append(STGCBlock(c_in, c_out, num_kernels, residual=not plain,
                                dropout=0.0 if plain else dropout, learnable_mask=learnable_mask))
    return nn.ModuleList(blocks)


class AttentionHead(nn.Module):
    """Node attention [B, 1, T, V] and edge attention [B, 4, V, V] from the attention branch features.

    Convolutions have no bias: each feeds (through linear ops only) a BatchNorm that removes it.
    """

    def __init__(self, in_channels: int, num_joints: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, ATT_CHANNELS, 1, bias=False)
        self.node_conv = nn.Conv2d(ATT_CHANNELS, 1, 1, bias=False)
        self.node_bn = nn.BatchNorm2d(1)
        self.graph_conv = nn.Conv2d(ATT_CHANNELS, NUM_ATT_GRAPHS * num_joints, 1, bias=False)
        self.graph_bn = nn.BatchNorm2d(NUM_ATT_GRAPHS * num_joints)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, T, V = x.shape
        h = self.conv(self.bn(x))  # [B, 1024, T, V]
        att_node = torch.sigmoid(self.node_bn(self.node_conv(h))) * frame_mask  # [B, 1, T, V]
        # Mean over real frames only: padding must not dilute a short clip's graph.
        pooled = (h * frame_mask).sum(2, keepdim=True) / frame_mask.sum(2, keepdim=True).clamp(min=1)
        graphs = self.graph_bn(self.graph_conv(pooled))  # [B, 4 * V, 1, V]
        att_A = torch.relu(torch.tanh(graphs)).view(B, NUM_ATT_GRAPHS, V, V)
        return att_node, att_A


class STAGCN(nn.Module):
    def __init__(self, hidden_channel: int = 32, out_channel: int = 128, dropout: float = 0.5, num_joints: int = 22):
        super().__init__()
        h, o = hidden_channel, out_channel
        if o != 4 * h:
            raise ValueError(f"out_channel must be 4 * hidden_channel (two streams of 2h), got {o} and {h}")
        # Graph is derived data, not state: kept out of checkpoints so it always comes from graph.py.
        self.register_buffer("A", torch.from_numpy(build_spatial_adjacency(num_joints)), persistent=False)
        num_kernels = self.A.shape[0]  # 7
        self.input_bn = nn.BatchNorm1d(num_joints * 6)  # per joint and channel

        stream = [(3, h), (h, h), (h, h), (h, 2 * h), (2 * h, 2 * h)]
        self.joint_stream = _blocks(stream, num_kernels, dropout, learnable_mask=True, plain_first=True)
        self.bone_stream = _blocks(stream, num_kernels, dropout, learnable_mask=True, plain_first=True)

        branch = [(o, o), (o, o), (o, 2 * o), (2 * o, 2 * o), (2 * o, 2 * o)]
        self.attention_branch = _blocks(branch, num_kernels, dropout, learnable_mask=True)
        self.attention_head = AttentionHead(2 * o, num_joints)
        self.perception_branch = _blocks(branch, NUM_ATT_GRAPHS, dropout, learnable_mask=False)

    # Inference on CPU runs a few clips at a time, each group cut to its longest clip. Exact: in eval mode
    # every clip is computed on its own (BatchNorm uses running statistics) and padded frames come out as
    # zeros (tests/test_stagcn.py pins both), so the outputs are re-padded with zeros. Faster on CPU (README,
    # "Choices and differences"): big batches' intermediates (hundreds of MB) run from memory, not cache, and every
    # clip paid for the batch's longest one.
    EVAL_CHUNK = 4

    def forward(self, features: torch.Tensor,
                frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features [B, 6, T, V] (joints xyz, bones xyz); frame_mask [B, T] bool, True = real frame.

        Returns embedding [B, T, V, 4o], att_node [B, 1, T, V] (0 on padded frames), att_A [B, 4, V, V].
        """
        if self.training or features.device.type != "cpu":
            return self._forward(features, frame_mask)
        T = features.shape[2]
        outputs = []
        for f, m in zip(features.split(self.EVAL_CHUNK), frame_mask.split(self.EVAL_CHUNK)):
            used = m.any(0).nonzero()
            n = int(used.max()) + 1 if len(used) else T  # frames after the chunk's last real frame are padding
            embedding, att_node, att_A = self._forward(f[:, :, :n], m[:, :n])
            outputs.append((F.pad(embedding, (0, 0, 0, 0, 0, T - n)), F.pad(att_node, (0, 0, 0, T - n)), att_A))
        if len(outputs) == 1:
            return outputs[0]
        return tuple(torch.cat(parts) for parts in zip(*outputs))

    def _forward(self, features: torch.Tensor,
                 frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, C, T, V = features.shape
        mask = frame_mask.to(features.dtype).view(B, 1, T, 1)

        x = self.input_bn(features.permute(0, 3, 1, 2).reshape(B, V * C, T))
        x = x.view(B, V, C, T).permute(0, 2, 3, 1) * mask  # [B, 6, T, V]
        joints, bones = x[:, :3], x[:, 3:]
        for joint_block, bone_block in zip(self.joint_stream, self.bone_stream):
            joints = joint_block(joints, mask, self.A)
            bones = bone_block(bones, mask, self.A)
        feature = torch.cat([joints, bones], dim=1)  # [B, o, T, V]

        att = feature
        for block in self.attention_branch:
            att = block(att, mask, self.A)  # ends [B, 2o, T, V]
        att_node, att_A = self.attention_head(att, mask)

        per = feature * att_node
        for block in self.perception_branch:
            per = block(per, mask, att_A)  # ends [B, 2o, T, V]

        embedding = torch.cat([per, att], dim=1).permute(0, 2, 3, 1)  # [B, T, V, 4o]
        return embedding, att_node, att_A
