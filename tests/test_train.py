"""The training loop: optimizer rules for α, schedules, checkpoints, resuming, language models."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from models.transformer import Transformer
from isometry import data as D
from isometry.train._tracking import read_metrics
from isometry.train import (RunConfigError, TrainConfig, learning_rate_schedule, load_checkpoint,
                            make_optimizer, save_checkpoint, train)


def test_alpha_gets_its_own_rate_and_no_weight_decay():
    params = {"w": jnp.array([1.0, -2.0]), "block": {"alpha": jnp.array(0.5)}}
    grads = {"w": jnp.array([0.3, 0.1]), "block": {"alpha": jnp.array(0.2)}}
    cfg = TrainConfig(steps=10, optimizer="sgd", momentum=0.0, lr=0.1, alpha_lr=0.01,
                      weight_decay=0.5)
    tx = make_optimizer(cfg, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * (grads["w"] + 0.5 * params["w"]))
    np.testing.assert_allclose(updates["block"]["alpha"], -0.01 * 0.2)


def test_clipping_bounds_the_global_norm():
    params = {"w": jnp.zeros(3)}
    cfg = TrainConfig(steps=10, optimizer="sgd", momentum=0.0, lr=1.0, clip=0.5)
    tx = make_optimizer(cfg, params)
    updates, _ = tx.update({"w": jnp.array([3.0, 4.0, 0.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.3, -0.4, 0.0], rtol=1e-12)


def test_schedules():
    warm_step = learning_rate_schedule(1.0, TrainConfig(steps=100, warmup=10, schedule="step",
                                                       decay_steps=(50, 80), decay_factor=0.1))
    np.testing.assert_allclose([warm_step(i) for i in (0, 5, 10, 49, 50, 79, 80)],
                               [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01], rtol=1e-6)
    one = learning_rate_schedule(2.0, TrainConfig(steps=100, warmup=20, schedule="onecycle"))
    values = np.array([one(i) for i in range(100)])
    assert np.argmax(values) == 20 and values.max() == pytest.approx(2.0)
    assert values[0] < 0.1 and values[-1] < 1e-3
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(steps=1, optimizer="lion")


def test_checkpoint_round_trip_with_rng_keys(tmp_path):
    drop = nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=3))
    tree = ({"w": jnp.arange(3.0)}, nnx.state(drop))
    save_checkpoint(str(tmp_path / "c.npz"), 7, tree)
    step, back = load_checkpoint(str(tmp_path / "c.npz"), tree)
    assert step == 7
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(back)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RunConfigError, match="does not match"):
        load_checkpoint(str(tmp_path / "c.npz"), ({"w": jnp.arange(4.0)}, nnx.state(drop)))


def _fc():
    return models.FullyConnected(3, 8, variant="rezero", in_features=12, out_features=10,
                                 rngs=nnx.Rngs(0))


def test_short_run_writes_all_files_and_resume_checks_config(tmp_path):
    data = D.load_data("synthetic:2x2x3")
    cfg = TrainConfig(steps=30, batch_size=16, lr=0.1, checkpoint_every=10, eval_every=15)
    run = str(tmp_path / "run")
    result = train(_fc(), data, cfg, run_dir=run, input_shape=(12,), probes=2, track_every=10,
                   log_every=5)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["checkpoint.npz", "config.json", "metrics.jsonl", "spectra"]
    records = read_metrics(run)
    steps = [r["step"] for r in records]
    assert steps == [0, 5, 10, 15, 20, 25, 30]
    assert "eval_loss" in records[3] and result.final == records[-1]
    assert records[0]["spectrum"]["std_log"] == 0.0  # ReZero at α = 0: J = I
    assert records[-1]["spectrum"]["std_log"] > 0.0 and records[-1]["loss"] < records[1]["loss"]
    assert len(list((tmp_path / "run" / "spectra").iterdir())) == 4
    with pytest.raises(FileExistsError, match="--resume"):
        train(_fc(), data, cfg, run_dir=run, input_shape=(12,))
    other = TrainConfig(steps=30, batch_size=16, lr=0.2, checkpoint_every=10, eval_every=15)
    with pytest.raises(RunConfigError, match="lr"):
        train(_fc(), data, other, run_dir=run, input_shape=(12,), probes=2, track_every=10,
              log_every=5, resume=True)
    again = train(_fc(), data, cfg, run_dir=run, input_shape=(12,), probes=2, track_every=10,
                  log_every=5, resume=True)  # already finished: nothing more to do
    assert again.step == 30 and read_metrics(run) == records


def test_a_diverged_run_stays_stopped_on_resume(tmp_path):
    """A run that stopped on a non-finite loss, resumed with more steps: no NaN steps appended."""
    data = D.load_data("synthetic:2x2x3")
    cfg = TrainConfig(steps=30, batch_size=8, optimizer="sgd", lr=1e6, alpha_lr=1e6)
    run = str(tmp_path / "run")
    first = train(_fc(), data, cfg, run_dir=run, input_shape=(12,), probes=0, log_every=1)
    assert first.diverged and first.step < 30
    records = read_metrics(run)
    assert records[-1]["loss"] is None and records[-1]["loss_nonfinite"]
    again = train(_fc(), data, dataclasses.replace(cfg, steps=40), run_dir=run,
                  input_shape=(12,), probes=0, log_every=1, resume=True)
    assert again.diverged and again.step == first.step and read_metrics(run) == records


def test_language_model_reports_bits_per_byte(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 40)
    data = D.load_data(f"text:{text}", seq_len=8)
    model = Transformer(2, 8, heads=2, ffn=16, variant="rezero", vocab_size=256,
                               causal=True, dropout=0.1, rngs=nnx.Rngs(0))
    result = train(model, data, TrainConfig(steps=40, batch_size=8, optimizer="adam", lr=0.02),
                   run_dir=str(tmp_path / "lm"), probes=2, track_every=20, log_every=10)
    records = read_metrics(str(tmp_path / "lm"))
    first, last = records[0], records[-1]
    assert last["eval_bpb"] == pytest.approx(last["eval_loss"] / np.log(2))
    assert last["eval_bpb"] < first["eval_bpb"] < 8.5  # learns something from ~8 bits
    assert first["spectrum"]["chi"] == pytest.approx(1.0)  # α = 0: the stack is the identity
    assert last["spectrum"]["chi"] != pytest.approx(1.0)
    assert len(last["alpha"]) == 2 and all(a != 0.0 for a in last["alpha"].values())
    assert not result.diverged


def test_old_per_layer_checkpoints_and_run_dirs_are_refused(tmp_path):
    """isometry 0.1 wrote one leaf per layer and no layout marker: refuse, never mis-load."""
    import json

    tree = {"w": jnp.arange(3.0)}
    old = tmp_path / "old.npz"
    np.savez(old, step=np.asarray(5), leaf_0=np.arange(3.0))
    with pytest.raises(RunConfigError, match="one parameter per layer"):
        load_checkpoint(str(old), tree)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {}, "probes": 0}))
    with pytest.raises(RunConfigError, match="start a new run directory"):
        train(_fc(), D.load_data("synthetic:2x2x3"), TrainConfig(steps=1, batch_size=4),
              run_dir=str(run), resume=True, input_shape=(12,), probes=0)


def test_adagrad_is_pytorchs_by_default():
    """The first three updates equal torch.optim.Adagrad's formula on a constructed gradient:
    G_t = Σ g², p_t = p_{t−1} − lr·g_t/(√G_t + 1e-10) (first step −lr·sign(g))."""
    lr, wd = 0.05, 0.1
    p = np.array([0.5, -1.0, 2.0, 3e-4])
    grads = [np.array([1e-3, -2.0, 0.3, 1e-6]), np.array([-4e-3, 1.0, 0.3, 2e-6]),
             np.array([2e-3, 0.5, -0.6, -1e-6])]
    tx = make_optimizer(TrainConfig(steps=3, lr=lr, weight_decay=wd), {"w": jnp.asarray(p)})
    params = {"w": jnp.asarray(p)}
    state = tx.init(params)
    ref, acc = p.copy(), np.zeros_like(p)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        g_wd = g + wd * ref                      # torch: grad = grad + weight_decay * p
        acc += g_wd**2
        ref = ref - lr * g_wd / (np.sqrt(acc) + 1e-10)
        np.testing.assert_allclose(params["w"], ref, rtol=1e-7, atol=1e-12)
    first = make_optimizer(TrainConfig(steps=1, lr=lr), {"w": jnp.asarray(p)})
    step, _ = first.update({"w": jnp.asarray(grads[0])}, first.init({"w": jnp.asarray(p)}))
    np.testing.assert_allclose(step["w"], -lr * np.sign(grads[0]), rtol=1e-3)  # even |g| = 1e-6
    optax_style = make_optimizer(TrainConfig(steps=1, lr=lr, adagrad="optax"), {"w": jnp.asarray(p)})
    small, _ = optax_style.update({"w": jnp.asarray(grads[0])}, optax_style.init({"w": jnp.asarray(p)}))
    assert abs(float(small["w"][0])) < 1e-2 * lr  # optax: lr·g/√(0.1 + g²) for g = 1e-3
    with pytest.raises(ValueError, match="unknown adagrad style"):
        TrainConfig(steps=1, adagrad="keras")


def test_lr_factors_scale_named_leaves_fixups_scalars_at_a_tenth():
    from isometry.train import FIXUP_LR_FACTORS

    params = {"w": jnp.ones(2), "block": {"bias1a": jnp.array(0.0), "scale": jnp.array(1.0),
                                          "alpha": jnp.array(0.0)}}
    grads = jax.tree.map(lambda a: jnp.full_like(a, 2.0), params)
    cfg = TrainConfig(steps=1, optimizer="sgd", momentum=0.0, lr=0.5, lr_factors=FIXUP_LR_FACTORS)
    tx = make_optimizer(cfg, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -1.0)
    np.testing.assert_allclose(updates["block"]["bias1a"], -0.1)
    np.testing.assert_allclose(updates["block"]["scale"], -0.1)
    np.testing.assert_allclose(updates["block"]["alpha"], -1.0)
    with pytest.raises(ValueError, match="lr_factors must be positive"):
        TrainConfig(steps=1, lr_factors=(("scale", 0.0),))


def test_config_json_is_strict_and_a_nonfinite_setting_still_resumes(tmp_path):
    """One JSON policy (isometry._io): NaN as null with its reason, and the same conversion
    on both sides of the resume comparison (before, NaN there never equalled NaN now)."""
    import json

    data = D.load_data("synthetic:2x2x3")
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=1)
    run = str(tmp_path / "run")
    kw = dict(run_dir=run, input_shape=(12,), probes=0, run_info={"note": float("nan")})
    train(_fc(), data, cfg, **kw)
    text = (tmp_path / "run" / "config.json").read_text()
    stored = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in config.json"))
    assert stored["note"] is None and stored["note_nonfinite"] == "nan"
    again = train(_fc(), data, TrainConfig(steps=3, batch_size=4, checkpoint_every=1),
                  resume=True, **kw)
    assert again.step == 3
