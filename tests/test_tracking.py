"""Tracker: records, spectra on probes, α's, strictly increasing steps, torn lines, resuming."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import isometry as iso
from isometry.train._tracking import Tracker, read_metrics, read_spectrum

S = jnp.array([3.0, 2.0, 1.0, 0.5])


def apply_fn(params, x):
    """y = Q diag(scale·s) x: singular values scale·s at every input."""
    return params["q"] @ (params["scale"] * S * x)


def make_params(scale):
    q, _ = jnp.linalg.qr(jnp.asarray(np.random.default_rng(0).standard_normal((4, 4))))
    return {"q": q, "scale": jnp.asarray(scale), "blocks": [{"alpha": jnp.asarray(0.1 * scale)},
                                                           {"alpha": jnp.asarray(-0.2)}]}


def probes():
    return jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))


def test_records_spectra_alpha_and_no_recompile(tmp_path):
    t = Tracker(str(tmp_path), apply_fn=apply_fn, probes=probes(), every=2, log_every=1)
    for step in range(5):
        t.update(step, make_params(1.0 + step), loss=jnp.asarray(1.0 / (step + 1)), lr=0.1)
    assert t.spectrum_fn.trace_count == 1  # new params reuse the compiled spectrum
    t.close()
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [("spectrum" in r) for r in records] == [True, False, True, False, True]
    r = records[2]
    scale = 3.0
    np.testing.assert_allclose(r["spectrum"]["chi"], float(jnp.sum((scale * S) ** 2)) / 4, rtol=1e-12)
    np.testing.assert_allclose(r["spectrum"]["sigma_min"], 0.5 * scale, rtol=1e-12)
    assert r["alpha"] == {"blocks/0/alpha": pytest.approx(0.3), "blocks/1/alpha": pytest.approx(-0.2)}
    assert r["loss"] == pytest.approx(1 / 3) and r["lr"] == 0.1
    sv = read_spectrum(str(tmp_path), r)
    np.testing.assert_allclose(sv, np.tile(scale * np.asarray(S), (3, 1)), rtol=1e-12)
    assert sum(r["histogram"]["counts"]) == 12  # 3 probes x 4 singular values


def test_steps_must_increase(tmp_path):
    with Tracker(str(tmp_path)) as t:
        t.update(3, loss=1.0)
        with pytest.raises(ValueError, match="strictly increasing"):
            t.update(3, loss=1.0)
        with pytest.raises(ValueError, match="strictly increasing"):
            t.update(2, loss=1.0)
    with pytest.raises(FileExistsError, match="resume"):
        Tracker(str(tmp_path))


def test_a_reader_checks_and_records_like_the_writer_but_writes_nothing(tmp_path):
    """writer=False (processes other than 0): the same records, no file; the same checks."""
    run, fresh = str(tmp_path / "run"), str(tmp_path / "never")
    writer = Tracker(run, apply_fn=apply_fn, probes=probes(), every=2)
    reader = Tracker(fresh, apply_fn=apply_fn, probes=probes(), every=2, writer=False)
    for step in range(3):
        got = [t.update(step, make_params(1.0 + step), loss=jnp.asarray(0.5)) for t in (writer, reader)]
        assert got[0] == got[1]
    writer.close()
    reader.close()
    assert not os.path.exists(fresh) and len(read_metrics(run)) == 3
    with pytest.raises(FileExistsError, match="resume"):  # a reader refuses what the writer does
        Tracker(run, writer=False)
    lines = open(os.path.join(run, "metrics.jsonl")).read()
    Tracker(run, writer=False, resume_step=1).close()  # checks, does not cut records 2..
    assert open(os.path.join(run, "metrics.jsonl")).read() == lines


def test_torn_last_line_is_detected_and_cut_on_resume(tmp_path):
    t = Tracker(str(tmp_path), apply_fn=apply_fn, probes=probes(), every=2)
    for step in range(5):
        t.update(step, make_params(1.0), loss=float(step))
    t.close()
    path = tmp_path / "metrics.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"step": 5, "loss": 0.1')  # a write cut short by a crash
    with pytest.warns(UserWarning, match="torn write"):
        records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    # resume from a checkpoint at step 2: later records and spectra go, the torn line too
    with pytest.warns(UserWarning, match="torn write"):
        t = Tracker(str(tmp_path), apply_fn=apply_fn, probes=probes(), every=2, resume_step=2)
    assert t.last_step == 2
    t.update(3, make_params(1.0), loss=33.0)
    t.close()
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[-1]["loss"] == 33.0
    assert sorted(os.listdir(tmp_path / "spectra")) == ["000000000.npy", "000000002.npy"]
    assert path.read_bytes().endswith(b"\n")


def test_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(str(tmp_path))


def test_nonfinite_model_records_the_error(tmp_path):
    with Tracker(str(tmp_path), apply_fn=apply_fn, probes=probes(), every=1) as t:
        rec = t.update(0, make_params(jnp.nan), loss=jnp.nan)
    assert "spectrum" not in rec and "non-finite" in rec["spectrum_error"]
    written = json.loads((tmp_path / "metrics.jsonl").read_text())  # strict JSON: null + reason
    assert written["loss"] is None and written["loss_nonfinite"] == "nan"


# --- issue 15 item 3: a spectrum is never summarized from its top k -------------------------
def _small_resnet_like(dtype):
    """x ↦ tanh(W2 tanh(W1 x)) · 3: a spread spectrum over several decades (float64)."""
    import jax

    k1, k2 = jax.random.split(jax.random.key(3))
    w1 = jax.random.normal(k1, (48, 48), dtype) / jnp.sqrt(48.0).astype(dtype)
    w2 = jnp.diag(jnp.logspace(-8, 1, 48, dtype=dtype)) @ jax.random.orthogonal(k2, 48, dtype=dtype)
    return lambda p, x: jnp.tanh(w2 @ jnp.tanh(p * (w1 @ x)))


def test_figure4_statistics_agree_between_engines_within_the_stated_error():
    import jax

    import isometry as iso

    with jax.enable_x64(True):
        apply_fn = _small_resnet_like(jnp.float64)
        x = jax.random.normal(jax.random.key(1), (2, 48), jnp.float64)
        dense = iso.spectrum_fn(apply_fn, "dense", batched=True)(jnp.float64(1.0), x)
        free = iso.spectrum_fn(apply_fn, "lanczos", batched=True, k=10, num_steps=48,
                               num_probes=16)(jnp.float64(1.0), x, jax.random.key(0))
        assert isinstance(dense, iso.SpectrumResult) and isinstance(free, iso.SpectrumResult)
        want, got, err = dense.statistics(), free.statistics(), free.statistic_errors()
        for name in ("mean_sigma2", "median_log10", "vanished_share"):
            assert abs(got[name] - want[name]) <= err[name], (name, got[name], want[name], err[name])
        assert got["count"] == want["count"] == 2 * 48
        # the top 10 alone would say otherwise: that is what a top-k summary got wrong
        top = np.asarray(free.top_singular_values)
        assert float(np.mean(top**2)) > 3 * want["mean_sigma2"]
        with pytest.raises(AttributeError, match="top_singular_values"):
            free.singular_values


def test_tracker_summarizes_either_engine_from_the_whole_spectrum(tmp_path):
    import jax

    from isometry.train._tracking import load_spectrum

    with jax.enable_x64(True):
        apply_fn = _small_resnet_like(jnp.float64)
        x = jax.random.normal(jax.random.key(1), (2, 48), jnp.float64)
        records = {}
        for method, engine in (("dense", iso.dense()),
                               ("lanczos", iso.lanczos(k=10, num_steps=48, num_probes=16))):
            with Tracker(str(tmp_path / method), apply_fn=apply_fn, probes=x, every=1,
                         engine=engine, bins=40) as t:
                records[method] = t.update(1, jnp.float64(1.0), loss=1.0)
        d, f = records["dense"], records["lanczos"]
        assert d["spectrum"]["engine"] == "dense" and f["spectrum"]["engine"] == "lanczos"
        assert "spectrum_file" in d and "density_file" in f and "spectrum_file" not in f
        spec = load_spectrum(str(tmp_path / "lanczos"), f)
        err = spec.statistic_errors()
        for name in ("mean_sigma2", "median_log10", "vanished_share"):
            assert abs(f["figure"][name] - d["figure"][name]) <= err[name]
        # both histograms count all 2 x 48 σ (the density's expected counts, not 10 Ritz values)
        assert sum(d["histogram"]["counts"]) == 96
        np.testing.assert_allclose(sum(f["histogram"]["counts"]), 96, rtol=1e-9)
        with pytest.raises(KeyError, match="load_spectrum"):
            read_spectrum(str(tmp_path / "lanczos"), f)
