"""`isometry reproduce NAME --scale smoke`: every experiment writes its three files, and the
figure shows the numbers the JSON holds."""

import json
import os

import numpy as np
import pytest

from isometry.cli import main
from isometry.experiments import EXPERIMENTS, experiment
from isometry.experiments._report import PAPER_HEADING


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    # one folder for the module: table3 reuses fig7's finished runs (same settings)
    return str(tmp_path_factory.mktemp("reproduce"))


def _load(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_smoke_writes_png_json_md(name, out, capsys):
    assert main(["reproduce", name, "--scale", "smoke", "--out", out]) == 0
    printed = capsys.readouterr().out.split()
    for ext in ("png", "json", "md"):
        path = os.path.join(out, f"{name}.{ext}")
        assert path in printed and os.path.getsize(path) > 0
    with open(os.path.join(out, f"{name}.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    record = _load(out, name)  # strict JSON (write_json refuses NaN)
    assert record["name"] == name and record["scale"] == "smoke"
    md = open(os.path.join(out, f"{name}.md")).read()
    assert "**Outcome:**" in md and "|" in md
    assert PAPER_HEADING in md and "ran at scale \"smoke\"" in md
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_fig5_plot_shows_json_curves(out):
    if not os.path.exists(os.path.join(out, "fig5.json")):
        main(["reproduce", "fig5", "--scale", "smoke", "--out", out])
    record = _load(out, "fig5")
    fig = experiment("fig5").figure(record)
    lines = {l.get_label(): l for l in fig.axes[0].lines}
    for variant, curve in record["curves"].items():
        line = lines[experiment("fig5").LABELS[variant]]
        np.testing.assert_array_equal(line.get_xdata(), curve["steps"])
        np.testing.assert_allclose(line.get_ydata(), curve["mean"])
        # the mean is the mean of the raw runs the record holds
        n = len(curve["mean"])
        np.testing.assert_allclose(curve["mean"], np.mean([r[:n] for r in curve["runs"]], axis=0))
    o = record["outcomes"]["rezero"]
    assert o["reached"] <= o["runs"]


def test_fig4_histograms_come_from_json_sigma(out):
    if not os.path.exists(os.path.join(out, "fig4.json")):
        main(["reproduce", "fig4", "--scale", "smoke", "--out", out])
    record = _load(out, "fig4")
    panels = experiment("fig4").panels(record)
    a = record["a_postnorm_encoders"]
    for depth, v in a.items():
        spec = panels["(a) Post-Norm encoders at init"][f"{depth} layers"]
        np.testing.assert_allclose(np.mean(np.asarray(spec.singular_values) ** 2), v["mean_sigma2"])
    # ReZero at alpha = 0: the stack is the identity, every singular value is 1
    sigma0 = np.asarray(record["b_rezero_lm"]["steps"]["0"]["sigma"], dtype=float)
    np.testing.assert_allclose(sigma0, 1.0, rtol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "fig99", "--scale", "smoke"], "unknown NAME 'fig99'"),
    (["reproduce", "fig5", "--scale", "huge"], "unknown --scale 'huge'"),
])
def test_bad_name_or_scale_is_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)


def _fig7_row(iterations, nonfinite=False):
    return {"iterations_to_threshold": iterations, "nonfinite": nonfinite, "final_bpb": 3.0,
            "eval_bpb": 2.9, "steps": [10], "bpb_smoothed": [3.0]}


def test_fig7_verdict_bounds_the_speedup_and_names_ties():
    fig7 = experiment("fig7")
    settings = dict(fig7.SETTINGS["cpu"].__dict__)
    shallow = {"Post-Norm + warm-up": _fig7_row(None), "Pre-Norm": _fig7_row(130),
               "ReZero α=1": _fig7_row(260), "ReZero α=0": _fig7_row(130)}
    record = {"data": "text", "settings": settings, "unigram_bpb": 4.5, "shallow": shallow,
              "deep": {}, "rezero_speedup": None}
    md = fig7.markdown(record)
    assert "Pre-Norm and ReZero α=0 reach 3.3 BPB first (130 iterations" in md
    assert f"at least {400 / 130:.2f}× as fast" in md  # the reference never got there in 400
    assert "> 1.54× (reference not reached)" in md     # ReZero α = 1's row
    shallow["Post-Norm + warm-up"] = _fig7_row(100)
    record["rezero_speedup"] = 100 / 130 - 1
    assert "does **not** hold" in fig7.markdown(record)


def _structure(obj):
    """The shape of a JSON document: keys of dicts (reason keys `*_nonfinite` left out, they
    appear only where a value was not finite), the first element of lists, and "scalar"."""
    if isinstance(obj, dict):
        return {k: _structure(v) for k, v in obj.items() if not k.endswith("_nonfinite")}
    if isinstance(obj, list):
        return [_structure(obj[0])] if obj and isinstance(obj[0], (dict, list)) else "list"
    return "scalar"


def test_fig2_one_schema_for_isometry_toy_and_reproduce(out, tmp_path):
    if not os.path.exists(os.path.join(out, "fig2.json")):
        main(["reproduce", "fig2", "--scale", "smoke", "--out", out])
    reproduced = _load(out, "fig2")
    toy_dir = tmp_path / "toy"
    assert main(["toy", "--out", str(toy_dir), "--grid", "16", "--steps", "500",
                 "--w-starts=-1.5,1.0"]) == 0
    written = json.loads((toy_dir / "fig2.json").read_text())
    assert set(reproduced) - {"scale"} == set(written)  # `reproduce` adds only its scale
    assert _structure(dict(reproduced, scale=None)) == _structure(dict(written, scale=None))
    for record in (reproduced, written):
        assert set(record["paths"]) == {"rezero", "residual"}
        assert len(record["paths"]["rezero"]) == len(record["rezero"])
        assert record["settings"]["grid_size"] == len(record["grid"]["w"])
