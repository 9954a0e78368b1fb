"""Inference: a `Predictor` (frozen model + a bank of named prompts), decoding, scoring, ensembles, interpretation.

  predictor = Predictor.load(checkpoint, {"rte": "rte.npy"}, vocabulary=vocab)
  predictor.predict(["..."], prompt="rte"); predictor.score(...); predictor.rank_classify(...)
"""

from prompt_tuning_jax.inference.bank import PromptBank, load_prompt_source
from prompt_tuning_jax.inference.ensemble import ensemble_predict, ensemble_rank_classify, majority_vote
from prompt_tuning_jax.inference.predictor import (
    Batch,
    Prediction,
    Predictor,
    get_prompt,
    load_model,
    make_batch,
    model_from_gin,
    set_prompt,
)

__all__ = [
    "Batch", "Prediction", "Predictor", "PromptBank", "ensemble_predict", "ensemble_rank_classify", "get_prompt",
    "load_model", "load_prompt_source", "majority_vote", "make_batch", "model_from_gin", "set_prompt",
]
