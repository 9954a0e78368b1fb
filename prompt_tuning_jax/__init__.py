"""prompt_tuning_jax: prompt tuning (Lester et al. 2021) for a frozen T5 1.1 in JAX/Flax, t5x-style."""

__version__ = "0.1.0"
