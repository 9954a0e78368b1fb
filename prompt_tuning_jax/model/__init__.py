"""T5 1.1 in Flax linen with T5X parameter names and logical axis names."""

from prompt_tuning_jax.model.config import SIZES, T5Config, config_for_size
from prompt_tuning_jax.model.t5 import Decoder, Encoder, Transformer

__all__ = ["SIZES", "T5Config", "config_for_size", "Decoder", "Encoder", "Transformer"]
