from sora_jax.main import run

run()
