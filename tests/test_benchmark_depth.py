"""benchmarks/depth.py runs end to end at a tiny setting and writes its JSON (not a timing test)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_depth_benchmark_quick(tmp_path):
    out = tmp_path / "depth.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "depth.py"), "--quick",
                    "--tasks", "dense,train", "--no-transformer", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    rows = result["fc"]["rows"]
    assert [r["depth"] for r in rows] == [4, 16]
    for row in rows:
        assert row["loop_reference"]
        for task in ("dense", "train"):
            for variant in ("scan", "loop"):
                assert row[task][variant]["compile_seconds"] > 0
                assert row[task][variant]["steady_seconds"] > 0
        # the loop reference runs the same weights: the same singular values
        assert row["dense"]["max_sigma_difference_scan_vs_loop_relative"] < 1e-4
    assert "fc_compile_dense_L16_over_L4" not in result["verdicts"]  # no 32-layer row at --quick
    assert result["partial"] is False
