"""The SMPL skeleton graph: 22 joints, built once in numpy, used by every ST-GC block as a buffer.

Spatial configuration partition of ST-GCN (Yan et al. 2018) with hop size 3: one kernel for the node
itself, then for each hop d = 1..3 one kernel for neighbours at least as far from the pelvis as the
node and one for neighbours nearer to it -> A of shape [1 + 2 * 3, 22, 22] = [7, 22, 22].
"""
from __future__ import annotations

import numpy as np

# The parent table is already 0-indexed: the original subtracted 1 again and built a wrong skeleton with an
# edge (-1, 0), wrapped to joint 21. One table serves the graph and the bone features.
from common.skeleton import SMPL_PARENTS

SMPL_EDGES = [(child, parent) for child, parent in enumerate(SMPL_PARENTS) if parent >= 0]  # 21
PELVIS = 0


def hop_distance(num_nodes: int, edges: list[tuple[int, int]], max_hop: int) -> np.ndarray:
    """[V, V] number of edges between two nodes; inf when more than max_hop apart."""
    walk = np.eye(num_nodes)
    for i, j in edges:
        walk[i, j] = walk[j, i] = 1
    # within[d, v, w]: w reachable from v in at most d steps (self loops make powers cumulative)
    within = np.stack([np.linalg.matrix_power(walk, d) > 0 for d in range(max_hop + 1)])
    return np.where(within[-1], (~within).sum(0), np.inf)


def normalize_digraph(adjacency: np.ndarray) -> np.ndarray:
    """A · D^-1 with D the column sums: each node averages over the neighbours it aggregates."""
    degree = adjacency.sum(0)
    return adjacency / np.where(degree > 0, degree, 1)[None, :]


def build_spatial_adjacency(num_nodes: int = 22, edges: list[tuple[int, int]] = SMPL_EDGES, center: int = PELVIS,
                            max_hop: int = 3) -> np.ndarray:
    """[1 + 2 * max_hop, V, V]; A[k, v, w] weighs what node w gathers from node v in kernel k."""
    for edge in edges:
        if not all(0 <= node < num_nodes for node in edge):
            raise ValueError(f"edge {edge} is outside nodes 0..{num_nodes - 1}")
    hop = hop_distance(num_nodes, edges, max_hop)
    # Distances to the centre are truncated at max_hop, exactly as the reference ST-GCN Graph (and so
    # the published model) does: joints more than 3 hops from the pelvis count as equally far, so both
    # directions of their edges share the "same distance or farther" kernel. Kept for fidelity.
    to_center = hop[:, center]
    nearer = to_center[:, None] < to_center[None, :]  # [v, w]: v is nearer the centre than w
    norm = normalize_digraph((hop <= max_hop).astype(np.float64))

    kernels = [np.where(hop == 0, norm, 0.0)]
    for d in range(1, max_hop + 1):
        kernels.append(np.where((hop == d) & ~nearer, norm, 0.0))  # same distance or farther
        kernels.append(np.where((hop == d) & nearer, norm, 0.0))
    return np.stack(kernels).astype(np.float32)
