"""p2pgan: HuSCF-GAN training across simulated heterogeneous peers."""

__version__ = "0.1.0"
