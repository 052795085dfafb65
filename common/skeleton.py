"""The skeleton every clip uses: 22 SMPL joints with x, y, z each (coordinates are [T, 66] per clip)."""

N_JOINTS = 22
COORD_DIM = 3 * N_JOINTS
# Parent of each SMPL joint (0-indexed, pelvis -1); models/graph.py builds the skeleton graph from it.
LEFT_HIP, RIGHT_HIP = 1, 2
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
