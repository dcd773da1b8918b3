"""Spectra sharded over devices: four simulated CPU devices in a subprocess equal one device."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

import isometry as iso

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import isometry as iso
    assert jax.device_count() == 4, jax.devices()
    w = jax.random.normal(jax.random.key(0), (24, 24)) / jnp.sqrt(24.0)
    apply_fn = lambda p, x: jnp.tanh(p @ x)
    opts = dict(k=3, num_steps=8, max_steps=16, num_probes=2, chi_probes=4)
    for method, batch, options in (("dense", 6, {}), ("lanczos", 8, opts)):
        xs = jax.random.normal(jax.random.key(1), (batch, 24))
        sharded = iso.sharded_spectrum_fn(apply_fn, method, **options)(w, xs, jax.random.key(2))
        single = iso.spectrum_fn(apply_fn, method, batched=True, **options)(
            w, xs, jax.random.key(2))
        for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        if batch % 4 == 0:
            devices = {s.device for s in sharded.singular_values.addressable_shards}
            assert len(devices) == 4, devices
    print("OK")
""")


def test_four_devices_give_the_one_device_results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_one_device_mesh_and_bad_mesh():
    w = jax.random.normal(jax.random.key(0), (8, 8))
    xs = jax.random.normal(jax.random.key(1), (3, 8))
    spec = iso.sharded_spectrum_fn(lambda p, x: p @ x, "dense")(w, xs)
    np.testing.assert_allclose(spec.singular_values,
                               jnp.broadcast_to(jnp.linalg.svd(w, compute_uv=False), (3, 8)),
                               rtol=1e-10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    try:
        iso.sharded_spectrum_fn(lambda p, x: p @ x, mesh=mesh)
    except ValueError as err:
        assert "batch_mesh" in str(err)
    else:
        raise AssertionError("a mesh without a 'batch' axis must be rejected")
