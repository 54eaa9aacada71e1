"""sora_jax: JAX-native latent video diffusion (VAE + text encoder + DiT), one entry point."""
__version__ = "0.1.0"
