"""`isometry theory`: JSON and PNG written, predictions beside measurements, bad options."""

import json

import pytest

from isometry.cli import main


def test_predictions_only_json(tmp_path, capsys):
    out = tmp_path / "th"
    code = main(["theory", "--activation", "relu", "--weights", "orthogonal", "--depth", "2,4",
                 "--sigma-w2", "2", "--sigma-b2", "0", "--samples", "0", "--out", str(out),
                 "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["depth"] for r in doc["records"]] == [2, 4]
    for rec in doc["records"]:
        p = rec["predicted"]
        assert {"q_star", "chi_1", "m1", "m2", "m3", "nvar", "edge", "mean_sigma"} <= set(p)
        assert p["chi_1"] == pytest.approx(1.0)
        assert p["nvar"] == pytest.approx(rec["depth"])  # orthogonal ReLU at χ₁ = 1: nvar = L
        assert "measured" not in rec
    assert json.loads((out / "theory.json").read_text()) == doc
    assert (out / "theory.png").stat().st_size > 0


def test_measured_beside_predicted(tmp_path, capsys):
    out = tmp_path / "th"
    code = main(["theory", "--activation", "hardtanh", "--depth", "2", "--sigma-b2", "0.05",
                 "--width", "32", "--samples", "2", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "theory.json").read_text())
    rec = doc["records"][0]
    assert rec["predicted"]["chi_1"] == pytest.approx(1.0, abs=1e-9)  # critical σ_w² by default
    assert set(rec["measured"]) == {"mean", "se"}
    measured, se = rec["measured"]["mean"]["m1"], rec["measured"]["se"]["m1"]
    # at χ₁ = 1 the mean σ² stays 1 at every depth: the nets' χ agrees (width 32: within 0.2)
    assert abs(measured - rec["predicted"]["m1"]) < 0.2 and 0 < se < 0.2
    assert "measured" in capsys.readouterr().out  # the table
    assert (out / "theory.png").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["--samples", "1"], "--samples"),
    (["--depth", "0"], "--depth"),
    (["--sigma-b2", "-1"], "--sigma-b2"),
    (["--sigma-w2", "0"], "--sigma-w2"),
    (["--sigma-b2", "0.1"], "no critical point"),            # ReLU has none with biases
    (["--sigma-w2", "3", "--activation", "tanh", "--sigma-b2", "0", "--weights", "gaussian",
      "--width", "0"], "--width"),
])
def test_bad_options(tmp_path, capsys, argv, message):
    code = main(["theory", "--samples", "0", "--out", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_no_fixed_point_is_strict_json(tmp_path, capsys):
    """ReLU at σ_w² = 3 has no finite q*: theory.json says null with the reason, never NaN."""
    out = tmp_path / "th"
    code = main(["theory", "--activation", "relu", "--sigma-w2", "3", "--depth", "2",
                 "--samples", "0", "--out", str(out), "--json"])
    assert code == 0
    text = (out / "theory.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in theory.json"))
    predicted = doc["records"][0]["predicted"]
    assert predicted["q_star"] is None and predicted["q_star_nonfinite"] == "nan"
    assert predicted["chi_1"] == pytest.approx(1.5)
    assert json.loads(capsys.readouterr().out) == doc


@pytest.mark.parametrize("variant", [["--variant", "plain"],
                                     ["--variant", "rezero", "--alpha", "0.2"]])
def test_the_namespace_is_read_not_written(tmp_path, capsys, variant):
    """The command builds a frozen TheoryConfig from the arguments and leaves them as parsed."""
    from isometry.cli import build_parser

    args = build_parser().parse_args(["theory", "--activation", "linear", "--depth", "2",
                                      "--samples", "0", "--out", str(tmp_path), *variant])
    before = dict(vars(args))
    assert args.func(args) == 0
    assert vars(args) == before
