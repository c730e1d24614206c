"""Value ranges of config keys as annotated-types constraints, and the error a rule across keys
raises; shared by every section module."""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


# Value ranges, checked at load (annotated-types constraints, as pydantic reads them too).
Count = Annotated[int, Ge(1)]  # sizes, lengths, steps: at least one
NonNegative = Annotated[int, Ge(0)]
Positive = Annotated[float, Gt(0)]
Share = Annotated[float, Interval(ge=0, lt=1)]  # dropout rates, shares of a catalogue
Quantile = Annotated[float, Interval(gt=0, lt=1)]


class _Invalid(ValueError):
    """A rule across keys of one section broken; `key` names the key to change."""

    def __init__(self, key: str, problem: str):
        super().__init__(problem)
        self.key = key
