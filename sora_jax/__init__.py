"""sora_jax: JAX-native latent video diffusion (VAE + text encoder + DiT), one entry point."""
from sora_jax import runtime as _runtime

__version__ = "0.1.0"
HOST_MALLOC_TUNED = _runtime.configure_host_malloc()  # Before JAX starts threads: see runtime.py.
