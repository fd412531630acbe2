"""The certification units (`lora_dropout.certify.units`) against pandas' groupby and by hand."""

import numpy as np
import pandas as pd
import pytest

from lora_dropout.certify.units import PREMISES, group_units, has_groups, row_units, unit_mean


def test_unit_mean_is_the_mean_of_group_means():
    rng = np.random.default_rng(0)
    groups = list(rng.choice(["a", "b", "c", "d"], size=40, p=[0.1, 0.2, 0.3, 0.4]))
    values = rng.random((3, 40))
    units = group_units(groups)
    expected = [pd.Series(v).groupby(groups).mean().mean() for v in values]
    np.testing.assert_allclose(unit_mean(values, units), expected, rtol=1e-12)
    assert units.count == 4 and units.level == "group" and units.premise == PREMISES["group"]
    # numbered in order of first occurrence
    first = list(dict.fromkeys(groups))
    assert [first[i] for i in units.index] == groups
    np.testing.assert_allclose(unit_mean(values, row_units(40, declared=True)), values.mean(axis=1), rtol=1e-12)
    # by hand: groups [x, x, y] with values [1, 0, 1] -> (0.5 + 1) / 2
    assert unit_mean(np.array([1.0, 0.0, 1.0]), group_units(["x", "x", "y"])) == pytest.approx(0.75)


def test_missing_groups_and_mismatched_lengths_are_errors():
    assert has_groups(["a", None]) and not has_groups([None, float("nan")])
    with pytest.raises(ValueError, match="row 1 has no group"):
        group_units(["a", None])
    with pytest.raises(ValueError, match="3 rows but the units 2"):
        unit_mean(np.zeros(3), row_units(2, declared=False))
    assert row_units(2, declared=False).premise == PREMISES["row_ungrouped"]
