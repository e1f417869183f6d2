"""rnnlm's model package: vocabulary, recurrent language model, inference, clipping and weight files.

Depends on torch (and safetensors) only; never on the web service.
"""

from model.cells import State
from model.clipping import grad_clipping
from model.inference import Score, generate, score, warm
from model.lm import RNNLM, LMConfig
from model.vocab import UNK, Vocab
from model.weights import FORMAT, LoadedWeights, WeightsError, load_weights, save_weights

__all__ = [
    "FORMAT",
    "LMConfig",
    "LoadedWeights",
    "RNNLM",
    "Score",
    "State",
    "UNK",
    "Vocab",
    "WeightsError",
    "generate",
    "grad_clipping",
    "load_weights",
    "save_weights",
    "score",
    "warm",
]
