"""The spatio-temporal graph convolution block shared by every part of the STA-GCN encoder."""
import torch
from torch import nn


class STGCBlock(nn.Module):
    """Spatial graph conv -> BN -> ReLU -> temporal conv (9 frames) -> BN -> Dropout, + residual, ReLU.

    The graph is either the fixed skeleton A [K, V, V] (scaled by a learnable mask M) or one graph per
    sample [B, K, V, V] (the perception branch's learned att_A, which has no mask: a mask there would
    never receive a gradient, as in the original).
    """

    def __init__(self, in_channels, out_channels, num_kernels, residual=True, dropout=0.5,
                 learnable_mask=True, num_nodes=22, temporal_kernel=9):
        super().__init__()
        self.num_kernels = num_kernels
        self.graph_conv = nn.Conv2d(in_channels, out_channels * num_kernels, 1)
        self.mask = nn.Parameter(torch.ones(num_kernels, num_nodes, num_nodes)) if learnable_mask else None
        self.graph_bn = nn.BatchNorm2d(out_channels)
        self.temporal_conv = nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1),
                                       padding=((temporal_kernel - 1) // 2, 0))
        self.temporal_bn = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        if not residual:
            self.residual = None
        elif in_channels == out_channels:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))

    def forward(self, x, frame_mask, A):
        """x [B, C_in, T, V], frame_mask [B, 1, T, 1] (1 = real frame), A [K, V, V] or [B, K, V, V]."""
        B, _, T, V = x.shape
        y = self.graph_conv(x).view(B, self.num_kernels, -1, T, V)  # [B, K, C_out, T, V]
        if A.dim() == 3:
            y = torch.einsum("nkctv,kvw->nctw", y, A if self.mask is None else A * self.mask)
        elif self.mask is None:
            y = torch.einsum("nkctv,nkvw->nctw", y, A)
        else:
            raise ValueError("per-sample graphs [B, K, V, V] go to blocks built with learnable_mask=False")
        # Padded frames hold BN/conv biases here; zero them so the temporal conv sees what it sees at
        # the end of an unpadded clip, and a clip's output does not depend on its batch neighbours.
        y = torch.relu(self.graph_bn(y)) * frame_mask  # [B, C_out, T, V]
        y = self.dropout(self.temporal_bn(self.temporal_conv(y)))
        if self.residual is not None:
            y = y + self.residual(x)
        return torch.relu(y) * frame_mask
