"""sora_jax: an open, JAX-native Sora-class text-to-video system."""
from setuptools import find_packages, setup

# Pinned to the versions the project is tested with (CPU, Python 3.11).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "einops==0.8.2",
    "absl-py==2.5.1",
    "numpy>=2.0,<3",
    "av==18.1.0",
    "Pillow==13.0.0",
    "ml_dtypes==0.7.0",
    "etils[epath,epath-gcs]==1.15.0",  # paths that may be gs:// (sora_jax/paths.py; gcsfs)
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "psutil==7.2.2",
]

EXTRAS = {
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "nbclient==0.11.0", "nbformat==5.11.1",
             "ipykernel==7.4.0",
             "scikit-image==0.26.0",  # the reference for the PSNR/SSIM test
             "gcp-storage-emulator==2026.7.19"],  # a local GCS for tests/test_gcs_workdir.py
    # Reference implementations for parity tests only; torch must be the local
    # CPU wheel (`pip install torch==2.13.0` first, see scripts/test.sh).
    "parity": ["torch==2.13.0", "diffusers==0.42.1", "transformers==5.25.0",
               "sentence-transformers==6.3.0"],
    # Accelerator builds of the pinned jax: libtpu for TPU VMs and for --mode=compile (TPU
    # compiles on any host); CUDA 12 wheels for NVIDIA GPUs.
    "tpu": ["jax[tpu]==0.10.2"],
    "cuda12": ["jax[cuda12]==0.10.2"],
}

setup(
    name="sora_jax",
    version="0.1.0",
    description="JAX-native latent video diffusion transformer: train and sample from one entry point.",
    packages=find_packages(include=["sora_jax", "sora_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["sora-jax=sora_jax.main:run"]},
)
