"""Denoising networks. Importing this package registers the core nets in ``sciffusion.registry.NETS``."""
from sciffusion.nets.embeddings import TimeEmbedding, sinusoidal_embedding
from sciffusion.nets.unet2d import UNet2D

__all__ = ["TimeEmbedding", "UNet2D", "sinusoidal_embedding"]
