"""models.ResNet: layouts of the paper's ResNets, the identity at init, BatchNorm modes, training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import isometry as iso
from isometry.cli import main
from models import ResNet
from models.resnet import VARIANTS, Shortcut

F64 = jnp.float64


def n_params(model) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("depth,blocks,millions", [(20, 9, 0.27), (56, 27, 0.85)])
def test_cifar_layouts_match_he_et_al(depth, blocks, millions):
    # He et al. 2016a, Table 6: ResNet-20 has 0.27M and ResNet-56 0.85M parameters
    model = nnx.eval_shape(lambda: ResNet(depth, variant="residual", rngs=nnx.Rngs(0)))
    assert model.num_blocks == blocks and model.depth == depth
    assert abs(n_params(model) / 1e6 - millions) < 0.03 * millions + 0.005


def test_preact_resnet18_layout():
    model = nnx.eval_shape(lambda: ResNet(18, variant="prenorm", rngs=nnx.Rngs(0)))
    assert model.stages == (2, 2, 2, 2) and model.num_blocks == 8
    assert 11.1e6 < n_params(model) < 11.3e6   # ≈ 11.2M with 1×1 projection shortcuts
    y = jax.eval_shape(lambda x: ResNet(18, variant="prenorm", rngs=nnx.Rngs(0))(x),
                       jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert y.shape == (2, 10)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNet(21, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown ResNet variant"):
        ResNet(20, variant="postnorm", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="FixUp replaces BatchNorm"):
        ResNet(variant="fixup", stages=(1,), width=2, batchnorm=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="NHWC"):
        tiny("rezero")(jnp.ones((2, 3, 6, 6), F64))


#: One small layout for every test (shared shapes keep compilation cheap): one stage of two
#: shape-keeping blocks, 4 channels, 6×6 images.
TINY = dict(stages=(2,), width=4)
IMAGE = (6, 6, 3)


def tiny(variant, **kw):
    return ResNet(variant=variant, param_dtype=F64, rngs=nnx.Rngs(0), **TINY, **kw)


def images(batch=(), seed=0):
    return jax.random.normal(jax.random.key(seed), (*batch, *IMAGE), F64)


@pytest.mark.parametrize("variant,kw", [("fixup", {}), ("rezero", {}),
                                        ("rezero", {"batchnorm": False}), ("gated", {}),
                                        ("zero_gamma", {}), ("prenorm_rezero", {})])
def test_identity_at_init_where_it_should(variant, kw):
    """Shape-keeping blocks start as the identity: ReZero and Gated (α = 0) on any stream,
    FixUp and zero-γ (x ↦ φ(x + 0)) on the non-negative stream their stem produces."""
    model = tiny(variant, **kw)
    model.eval()
    x0 = model.embed(images())
    assert np.any(x0 > 0)
    np.testing.assert_array_equal(model.stack(x0), x0)
    # J = I where φ' = 1: anywhere for α = 0, on the positive stream for φ(x + 0)
    x1 = x0 - 0.5 if variant in ("rezero", "gated", "prenorm_rezero") else x0 + 0.5
    np.testing.assert_array_equal(model.stack(x1), x1)
    np.testing.assert_array_equal(iso.dense_jacobian(model.stack, x1), np.eye(x1.size))


def test_fixup_identity_path_carries_x_and_preact_rezero_gates_the_preact_branch():
    """FixUp: x_{i+1} = φ(x + F(x + a)) where the shape is kept (the identity path carries x,
    not x + a, as in the FixUp code); PreAct + ReZero: x + α·(the pre-activation branch)."""
    fixup = tiny("fixup")
    x = fixup.embed(images((2,))) - 0.2  # a stream with negative entries too
    fix = fixup.blocks[0]
    fix.bias1a[...] = 0.3
    fix.conv2.kernel[...] = jax.random.normal(jax.random.key(5), fix.conv2.kernel.shape, F64)
    np.testing.assert_allclose(fix(x), jax.nn.relu(x + fix.branch(x + 0.3)), rtol=1e-12)
    pre = tiny("prenorm_rezero", alpha_init=0.4)
    pre.eval()
    x = pre.embed(images((2,)))
    block, ref = pre.blocks[0], tiny("prenorm").blocks[0]
    ref.eval()
    h = jax.nn.relu(block.bn1(x))
    np.testing.assert_allclose(block(x), x + 0.4 * block.preact_branch(h), rtol=1e-12)
    np.testing.assert_allclose(ref(x), x + ref.preact_branch(jax.nn.relu(ref.bn1(x))),
                               rtol=1e-12)


def test_residual_stack_is_not_the_identity():
    model = tiny("residual")
    model.eval()
    x0 = model.embed(images())
    assert not np.allclose(model.stack(x0), x0)


def test_fixup_initialization():
    model = tiny("fixup")
    depth_blocks, width = model.num_blocks, TINY["width"]
    block = model.unstacked_blocks()[0]
    assert not hasattr(block, "bn1") or not isinstance(block.bn1, nnx.BatchNorm)
    np.testing.assert_array_equal(block.conv2.kernel[...], 0)
    np.testing.assert_array_equal(model.classifier.kernel[...], 0)
    w = np.asarray(block.conv1.kernel[...])
    # std √(2/fan_out)·L^{-1/2}; relative standard error of a sample std is 1/√(2n)
    expected = math.sqrt(2.0 / (9 * width) / depth_blocks)
    assert abs(w.std() / expected - 1) < 5 / math.sqrt(2 * w.size)
    assert float(block.scale[...]) == 1.0 and float(block.bias1a[...]) == 0.0


def test_zero_gamma_zeroes_the_last_batchnorm_scale():
    model = tiny("zero_gamma")
    for block in model.unstacked_blocks():
        np.testing.assert_array_equal(block.bn2.scale[...], 0)
        np.testing.assert_array_equal(block.bn1.scale[...], 1)


def test_downsampling_block_shapes():
    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    for shortcut in ("identity", "projection"):
        def hidden_states(x, shortcut=shortcut):
            return ResNet(variant="residual", stages=(1, 1, 1), width=4, shortcut=shortcut,
                          rngs=nnx.Rngs(0)).hidden_states(x)

        # one depth-stacked run per resolution: (x_0, x_1), (x_2,), (x_3,), each (depth, batch, …)
        xs = jax.eval_shape(hidden_states, x)
        assert [x.shape for x in xs] == [(2, 2, 8, 8, 4), (1, 2, 4, 4, 8), (1, 2, 2, 2, 16)]


def test_option_a_shortcut_subsamples_and_zero_pads():
    shortcut = Shortcut(2, 4, 2, kind="identity", batchnorm=True, param_dtype=F64,
                        rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 4, 2), F64)
    s = shortcut(x)
    assert s.shape == (2, 2, 4)
    np.testing.assert_array_equal(s[..., :2], x[::2, ::2, :])
    np.testing.assert_array_equal(s[..., 2:], 0)


def test_batchnorm_train_and_eval_modes():
    model = tiny("residual")
    x = images((4,)) + 1.0
    model.train()
    assert model.stem_norm.use_running_average is False
    y_train = model(x)                       # batch statistics, and running averages move
    assert np.any(np.asarray(model.stem_norm.mean[...]) != 0)
    model.eval()
    assert model.stem_norm.use_running_average is True
    y_eval = model(x)
    np.testing.assert_array_equal(model(x), y_eval)  # eval mode is a pure function
    assert not np.allclose(y_train, y_eval)


@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_a_few_sgd_steps_without_nan(variant):
    model = ResNet(variant=variant, stages=(1,), width=TINY["width"], param_dtype=F64,
                   rngs=nnx.Rngs(0))
    model.train()
    x = images((16,))
    y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], f"fitting one batch must lower the loss: {losses}"
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(np.all(np.isfinite(p)) for p in leaves)
    if variant in ("gated", "rezero"):
        assert all(float(b.alpha[...]) != 0 for b in model.unstacked_blocks()), "α must move off 0"


def test_cli_spectrum_resnet(tmp_path, capsys):
    rc = main(["spectrum", "--model", "resnet", "--variant", "fixup", "--blocks", "1",
               "--channels", "2", "--image-size", "4", "--samples", "1", "--x64",
               "--out", str(tmp_path), "--json"])
    assert rc == 0
    import json

    records = json.loads(capsys.readouterr().out)["records"]
    assert [(r["variant"], r["depth"]) for r in records] == [("fixup", 4)]
    assert np.shape(records[0]["singular_values"]) == (1, 10)  # logits w.r.t. a 4×4×3 image
    assert records[0]["chi"] == 0   # FixUp zero-initializes the classifier: J = 0 at init
    assert (tmp_path / "spectra.png").exists()
