"""Flax NNX architectures of the ReZero paper: each model is a plain `nnx.Module`.

Every model is a `Stack` (embed → blocks → head) with a `variant=` among the names of Table 1
of the paper and, for ReZero, `alpha_init=`.
"""

from models._stack import ACTIVATIONS, Stack
from models.fully_connected import FullyConnected
from models.resnet import ResNet
from models.transformer import Transformer

__all__ = ["ACTIVATIONS", "Stack", "FullyConnected", "ResNet", "Transformer"]
