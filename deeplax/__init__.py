"""deeplax: the DeepLab family (v1, v2, v3, v3+) and the dense CRF in JAX/Flax."""

__version__ = "0.1.0"
