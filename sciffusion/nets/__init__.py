"""Networks and building blocks shared by several domains (time embeddings, setting checks, equivariance
test helpers). A net that only one domain uses lives in that domain (``sciffusion.domains.<name>``) and
registers itself in ``sciffusion.registry.NETS`` when the domain is imported."""
from sciffusion.nets.embeddings import TimeEmbedding, sinusoidal_embedding

__all__ = ["TimeEmbedding", "sinusoidal_embedding"]
