"""Flax NNX architectures of the ReZero paper: each model is a plain `nnx.Module`.

Every model is a `Stack` (embed → blocks → head) with a `variant=` among the names of Table 1
of the paper and, for ReZero, `alpha_init=`. Each has one frozen configuration dataclass
(`FullyConnectedConfig`, `ResNetConfig`, `TransformerConfig`) that its blocks share:
`Model(**fields, rngs=...)`, `Model.from_config(config, rngs=...)` and `model.config` agree.
`mesh=` (FullyConnected, Transformer) creates the parameters sharded by
`DEFAULT_SHARDING_RULES` (Flax NNX partitioning metadata).
"""

from models._stack import ACTIVATIONS, DEFAULT_SHARDING_RULES, Partitioning, Stack
from models.fully_connected import (FC_NORM_EPSILON, FC_VARIANT_FLAGS, FullyConnected,
                                    FullyConnectedConfig, fc_blocks_apply_fn, fc_blocks_as_data)
from models.resnet import ResNet, ResNetConfig
from models.transformer import Transformer, TransformerConfig

sharded = Partitioning.sharded

__all__ = ["ACTIVATIONS", "DEFAULT_SHARDING_RULES", "Partitioning", "Stack", "sharded",
           "FullyConnected", "FullyConnectedConfig", "FC_NORM_EPSILON", "FC_VARIANT_FLAGS",
           "fc_blocks_apply_fn", "fc_blocks_as_data", "ResNet", "ResNetConfig", "Transformer", "TransformerConfig"]
