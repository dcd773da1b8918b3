"""isometry.cli._zoo: model configurations built from the parsed arguments, which stay as they are."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import models
from isometry.cli import UsageError, _zoo

F64 = jnp.float64


def test_cli_builds_the_config_from_arguments_it_leaves_as_they_are():
    parser = argparse.ArgumentParser()
    _zoo.add_model_args(parser)
    parser.add_argument("--x64", action="store_true")  # as the commands add it
    args = parser.parse_args(["--model", "resnet", "--blocks", "1,1", "--channels", "4", "--x64"])
    before = dict(vars(args))
    kind, variants = _zoo.resolve(args)
    task = SimpleNamespace(kind="classification", input_shape=(6, 6, 1), num_classes=3)
    config = kind.config(args, "rezero", _zoo.depths(args)[0], task)
    assert config == models.ResNetConfig(6, variant="rezero", stages=(1, 1), width=4,
                                         in_channels=1, num_classes=3, param_dtype=F64)
    model = _zoo.build_model(kind, args, "rezero", _zoo.depths(args)[0], seed=0, task=task)
    assert vars(args) == before, "the Namespace is read, never written"
    assert _zoo.depths(args) == [6] and model.depth == 6
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(F64)}
    with pytest.raises(UsageError, match="FixUp replaces BatchNorm"):
        kind.config(args, "fixup", 6, batchnorm=True)
