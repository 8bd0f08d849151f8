"""regtune's benchmarks against the voxelmorph package and MONAI (see benchmarks/README.md).

Peers are imported only inside the sections that measure them, only when installed.
"""
