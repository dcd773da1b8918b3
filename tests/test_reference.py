"""Everything computed before the restructuring is unchanged (float64 weights, 1e-12).

`tests/data/reference.npz` was written by `tests/reference.py` on the code before the
"one library" change; the same function runs on today's code here.
"""

import numpy as np
import pytest

import reference


@pytest.fixture(scope="module")
def values():
    return reference.compute()


def test_the_same_names_are_computed(values):
    saved = np.load(reference.PATH)
    assert sorted(values) == sorted(saved.files)


@pytest.mark.parametrize("name", sorted(np.load(reference.PATH).files))
def test_value_unchanged(values, name):
    saved = np.load(reference.PATH)[name]
    scale = max(1.0, float(np.abs(saved).max(initial=0.0)))
    np.testing.assert_allclose(values[name], saved, rtol=1e-12, atol=1e-12 * scale)
