"""infinity-jax: Infinity (bitwise scale-autoregressive text-to-image) in JAX / Flax NNX."""

__version__ = "0.1.0"
