"""Numbers from raw values, checked: no NaN, no silent overflow, no float rounding of integers.

Each function returns the converted values and a mask of the bad ones, so the caller can name
the file, column and line of the first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FLOAT_EXACT = 2.0**53  # float64 holds every integer below this, not all above
FLOAT32_MAX = float(np.finfo(np.float32).max)


def whole_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, mask of the values that are not whole numbers within int64).

    '12', 12.0 and '1.2e9' are whole; '1.5', '', 'NaN', 'inf' and 2**63 are not (a plain cast
    would turn the last ones into -2**63). Values written as integers stay exact past 2**53,
    where float64 skips integers.
    """
    number = _numeric(values)
    if number.dtype == np.int64:  # the common case: every value an integer in range
        return number.to_numpy(), np.zeros(len(number), bool)
    real = number.to_numpy(dtype="float64", na_value=np.nan)  # uint64 / float64 / object
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(real) & (real % 1 == 0)
    result = np.zeros(len(real), np.int64)
    small = whole & (np.abs(real) < FLOAT_EXACT)
    result[small] = real[small]
    bad = ~whole
    originals = values.to_numpy(dtype=object)
    for pos in np.flatnonzero(whole & ~small):  # rare: parse again exactly, check the range
        exact = _exact_int(originals[pos], real[pos])
        if -(2**63) <= exact < 2**63:
            result[pos] = exact
        else:
            bad[pos] = True
    return result, bad


def _exact_int(value, real: float) -> int:
    try:
        return int(value)  # '9007199254740993', a numpy or Python int
    except (TypeError, ValueError):
        return int(real)  # '1.5e18'


def finite_float32(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values, mask of the values that are not finite numbers float32 can hold)."""
    real = _numeric(values).to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(real) <= FLOAT32_MAX)  # NaN, inf, and 1e39 (inf as float32)
    return np.where(bad, 0, real).astype(np.float32), bad


def _numeric(values: pd.Series) -> pd.Series:
    """pd.to_numeric with every bad value NaN.

    Object columns (JSON) need a look at each value first: pandas reads True as 1 and raises
    OverflowError on an int beyond float range (10**400), where both are just bad values here.
    """
    if values.dtype == object:
        values = values.map(_bad_as_nan)
    return pd.to_numeric(values, errors="coerce")


def _bad_as_nan(value):
    if isinstance(value, bool | np.bool_):
        return np.nan
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return np.nan
    return value


def not_numbers(values: pd.Series) -> bool:
    """bool and datetime columns convert to numbers, but not to the ones meant (ns, 0/1)."""
    return (pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values)
            or pd.api.types.is_timedelta64_dtype(values))
