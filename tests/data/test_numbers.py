"""Checked number parsing: whole numbers exact within int64, finite float32."""

import numpy as np
import pandas as pd

from recsys.data.numbers import finite_float32, whole_numbers


def test_whole_numbers_exact_and_in_range():
    values = pd.Series(["9007199254740993", "1.0", "-3", "1e9", "9223372036854775807",
                        "-9223372036854775808"], dtype="str")
    result, bad = whole_numbers(values)
    assert not bad.any()
    # float64 would give ...992 for the first; the int64 limits themselves are fine
    assert result.tolist() == [9007199254740993, 1, -3, 10**9, 2**63 - 1, -(2**63)]


def test_whole_numbers_flags_what_a_cast_would_wrap_or_round():
    values = pd.Series(["1", "9223372036854775808", "18446744073709551615", "-1e30", "1.5", "",
                        "nan", "inf", "x"], dtype="str")
    result, bad = whole_numbers(values)
    assert bad.tolist() == [False] + [True] * 8
    assert result[0] == 1
    assert whole_numbers(pd.Series([10**20, 3], dtype=object))[1].tolist() == [True, False]
    assert whole_numbers(pd.Series([2.0**70, 2.0**60]))[0][1] == 2**60


def test_finite_float32():
    values, bad = finite_float32(pd.Series(["1.5", "-2", "inf", "nan", "1e39", "3e38", "x"]))
    assert bad.tolist() == [False, False, True, True, True, False, True]
    assert values.dtype == np.float32 and values[:2].tolist() == [1.5, -2.0]


def test_json_values_that_are_not_numbers_are_bad_not_errors_or_ones():
    # From JSON (object column): an int beyond float range raised OverflowError; True was 1
    values = pd.Series([10**400, True, np.True_, -(10**400), 7], dtype=object)
    assert whole_numbers(values)[1].tolist() == [True, True, True, True, False]
    assert whole_numbers(values)[0][4] == 7
    real, bad = finite_float32(values)
    assert bad.tolist() == [True, True, True, True, False] and real[4] == 7.0
