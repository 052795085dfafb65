"""The spatio-temporal graph convolution block shared by every part of the STA-GCN encoder."""
import torch
import torch.nn.functional as F
from torch import nn

from models.lora import base_layer, effective_weight


class Dropout(nn.Dropout):
    """nn.Dropout whose keep-mask on CPU comes from torch.rand_like instead of bernoulli_.

    PyTorch draws CPU bernoulli_ serially (~20 ns an element, ~8× slower than rand_like), and the encoder's
    18 dropout layers cover ~15 M elements per training step at batch 4 (72 frames): this cut STA-GCN
    forward+backward by ~7% on 2 cores. Same distribution (keep with probability 1 − p, scale 1 / (1 − p)),
    same global generator (other draws); other devices, eval mode and p ∈ {0, 1} use nn.Dropout unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        keep = torch.rand_like(x) >= self.p  # bool: 1 byte per element kept for backward, as native dropout
        return (x * keep).mul_(1.0 / (1.0 - self.p))


class STGCBlock(nn.Module):
    """Spatial graph conv -> BN -> ReLU -> temporal conv (9 frames) -> BN -> Dropout -> ReLU, + residual.

    As the original: `out = ReLU(Dropout(BN(tconv(h)))) + residual(x)`, no activation after the add, so a
    block's output (and the embedding) can be negative and a channel the ReLU zeroes still passes the
    identity path.

    The graph is either the fixed skeleton A [K, V, V] (scaled by a learnable mask M) or one graph per
    sample [B, K, V, V] (the perception branch's learned att_A, which has no mask: a mask there would
    never receive a gradient, as in the original).
    """

    def __init__(self, in_channels: int, out_channels: int, num_kernels: int, residual: bool = True,
                 dropout: float = 0.5, learnable_mask: bool = True, num_nodes: int = 22, temporal_kernel: int = 9):
        super().__init__()
        self.num_kernels = num_kernels
        self.graph_conv = nn.Conv2d(in_channels, out_channels * num_kernels, 1)
        self.mask = nn.Parameter(torch.ones(num_kernels, num_nodes, num_nodes)) if learnable_mask else None
        self.graph_bn = nn.BatchNorm2d(out_channels)
        self.temporal_conv = nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1),
                                       padding=((temporal_kernel - 1) // 2, 0))
        self.temporal_bn = nn.BatchNorm2d(out_channels)
        self.dropout = Dropout(dropout)
        if not residual:
            self.residual = None
        elif in_channels == out_channels:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """x [B, C_in, T, V], frame_mask [B, 1, T, 1] (1 = real frame), A [K, V, V] or [B, K, V, V]."""
        y = self.graph_convolution(x, A)  # [B, C_out, T, V]
        # Padded frames hold BN/conv biases here; zero them so the temporal conv sees what it sees at
        # the end of an unpadded clip, and a clip's output does not depend on its batch neighbours.
        y = torch.relu(self.graph_bn(y)) * frame_mask  # [B, C_out, T, V]
        y = torch.relu(self.dropout(self.temporal_bn(self.temporal_conv(y))))
        if self.residual is not None:
            y = y + self.residual(x)
        return y * frame_mask

    def graph_convolution(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """Σ_k (W_k x + b_k) · A_k, i.e. the 1×1 conv to C_out × K channels followed by
        einsum('nkctv,kvw->nctw') (or 'nkctv,nkvw->nctw' with per-sample graphs), computed graph first.

        Both steps are linear, so they commute: aggregate the *input* over the K graphs with one matrix
        product (joints are the innermost axis: no copy of x), then mix channels and kernels with one
        convolution of kernel (1, K) dilated by V over the [T, K·V] plane; the conv bias becomes
        Σ_k b_k · colsum(A_k). Same parameters, same result up to float rounding (tests/test_stagcn.py), but
        no C_out × K intermediate, no permuted copy of it and no matrix product with 22 output columns:
        STA-GCN forward+backward −7% on 2 CPU cores, −18% on 1; blocks that widen (C_out > C_in) 1.5–3×.
        """
        B, C_in, T, V = x.shape
        K = self.num_kernels
        conv = base_layer(self.graph_conv)  # LoRA (models/lora.py) may wrap it
        C_out = conv.out_channels // K
        bias = conv.bias.view(K, C_out)
        if A.dim() == 3:
            G = A if self.mask is None else A * self.mask  # [K, V, W]
            z = torch.matmul(x, G.transpose(0, 1).reshape(V, K * V))  # [B, C_in, T, K·W]
            bias = (bias.t() @ G.sum(1)).view(1, C_out, 1, V)
        elif self.mask is None:
            z = torch.matmul(x.reshape(B, C_in * T, V), A.transpose(1, 2).reshape(B, V, K * V))
            z = z.view(B, C_in, T, K * V)
            bias = torch.einsum("kc,bkw->bcw", bias, A.sum(2)).unsqueeze(2)  # [B, C_out, 1, W]
        else:
            raise ValueError("per-sample graphs [B, K, V, V] go to blocks built with learnable_mask=False")
        weight = effective_weight(self.graph_conv).view(K, C_out, C_in).permute(1, 2, 0).unsqueeze(2)  # [C_out, C_in, 1, K]
        return F.conv2d(z, weight, dilation=(1, V)) + bias
