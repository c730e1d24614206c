"""Reading raw files strictly: decode with the documented encoding, parse columns, fail loudly.

Every problem becomes a `DataError` that names the file, the column and the offending line, so a
user can open the raw file and look. Tables are read with every column as a string (no type
guessing, no "NA" -> NaN magic) and are parsed column by column afterwards.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.numbers import finite_float32, not_numbers, whole_numbers
from recsys.data.schema import DataError

UTF8 = ("utf-8",)
# Files documented as latin-1 are tried as utf-8 first, in case someone re-encoded them.
LATIN1 = ("utf-8", "latin-1")


def read_bytes(path: Path) -> bytes:
    """File content, gunzipped when the name ends in .gz; a missing file is a DataError."""
    if not path.is_file():
        raise DataError(f"{path.name}: file not found ({path})")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{path.name}: not a valid gzip file ({err})") from None
    return data


def read_text(
    path: Path, encodings: Sequence[str] = UTF8, sep: str | None = None,
    columns: Sequence[str] | None = (), quoted: bool = False,
) -> str:
    """Decode strictly with the first encoding that fits; trailing blank lines are dropped.

    `sep`, `columns` (None: the header line) and `quoted` only serve to name the column of
    an undecodable byte.
    """
    data = read_bytes(path)
    errors = []
    for encoding in encodings:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError as err:
            errors.append(err)
    else:  # report the first (documented) encoding's complaint
        raise _decode_error(path.name, data, errors[0], sep, columns, quoted)
    return text.removeprefix("\ufeff").rstrip("\r\n")


def _decode_error(name, data: bytes, err: UnicodeDecodeError, sep, columns,
                  quoted) -> DataError:
    """Locate the bad byte: line number, the column it falls in, and the line itself."""
    start = data.rfind(b"\n", 0, err.start) + 1
    end = data.find(b"\n", err.start)
    line = data[start : end if end >= 0 else len(data)]
    before = data[start : err.start]
    if sep:
        if columns is None:  # header file: names from the first line
            columns = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(sep)
        # separators outside double quotes (in quoted CSV) before the bad byte
        outside = re.sub(rb'"[^"]*"?', b"", before) if quoted else before
        index = outside.count(sep.encode())
        column = columns[index] if index < len(columns) else f"#{index + 1}"
    else:  # JSON: the last key opened before the bad byte
        keys = re.findall(rb'"([^"\\]{1,64})"\s*:', before)
        column = keys[-1].decode("ascii", "replace") if keys else "?"
    line_no = data.count(b"\n", 0, err.start) + 1
    return DataError(
        f"{name}: column '{column}': bytes not valid {err.encoding} "
        f"(byte {data[err.start]:#04x}, line {line_no}: {shorten(repr(line))})"
    )


def shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class RawTable:
    """A raw table as strings, in file order, that can point at its own lines in errors."""

    name: str  # file name shown in messages
    frame: pd.DataFrame  # every column a string column, row i = data line i
    line_of: Callable[[int], str]  # row position -> the raw line, for messages
    first_line: int = 1  # line number of row 0 (2 when there is a header)

    def __len__(self) -> int:
        return len(self.frame)

    def error(self, column: str, pos: int, problem: str) -> DataError:
        line = shorten(repr(self.line_of(pos)))
        return DataError(
            f"{self.name}: column '{column}': {problem} (line {self.first_line + pos}: {line})"
        )

    def require(self, *columns: str) -> None:
        for column in columns:
            if column not in self.frame.columns:
                header = ", ".join(map(str, self.frame.columns))
                raise self.error(column, 0, f"missing (columns: {shorten(header)})")

    def strs(self, column: str, allow_empty: bool = False) -> pd.Series:
        """A string column; empty values are an error unless allowed (then they become None)."""
        self.require(column)
        if not allow_empty and pd.api.types.is_float_dtype(self.frame[column]):
            raise self.error(column, 0, "ids must be strings or integers, not floats")
        values = self.frame[column].astype("str")
        empty = values.isna() | (values.str.strip() == "")
        if allow_empty:
            return values.astype(object).where(~empty, None)
        self._fail_where(column, empty, "empty value")
        return values

    def ints(self, column: str, allowed: Sequence[int] | None = None) -> pd.Series:
        """An int64 column of whole numbers ('7', '7.0', '7e0'); anything else is an error.

        Negative values are accepted (a timestamp before 1970 is a date like any other).
        """
        self._require_numbers(column)
        values, bad = whole_numbers(self.frame[column])
        self._fail_where(column, bad, "cannot parse {!r} as a whole number within int64")
        if allowed is not None:
            outside = ~np.isin(values, allowed)
            self._fail_where(column, outside, f"{{!r}} is not one of {list(allowed)}")
        return pd.Series(values, index=self.frame.index, dtype="int64")

    def floats(self, column: str) -> pd.Series:
        """A float32 column; NaN, inf and values float32 cannot hold are errors."""
        self._require_numbers(column)
        values, bad = finite_float32(self.frame[column])
        self._fail_where(column, bad, "cannot parse {!r} as a finite float32 number")
        return pd.Series(values, index=self.frame.index, dtype="float32")

    def _require_numbers(self, column: str) -> None:
        self.require(column)
        if not_numbers(self.frame[column]):  # parquet datetimes would become microseconds
            raise self.error(column, 0, f"expected numbers, got {self.frame[column].dtype}")

    def _fail_where(self, column: str, bad, problem: str) -> None:
        """Raise `problem` (formatted with the raw value) at the first row where `bad` is true."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            value = self.frame[column].iloc[pos]
            value = value.item() if isinstance(value, np.generic) else value  # 1e+30, no numpy
            raise self.error(column, pos, problem.format("" if pd.isna(value) else value))


def read_table(
    path: Path, sep: str, names: Sequence[str] | None = None, *,
    encodings: Sequence[str] = UTF8, quoting: int = csv.QUOTE_NONE,
) -> RawTable:
    """A delimited file as strings. `names` given: no header line; otherwise the first line is."""
    text = read_text(path, encodings, sep, names, quoting != csv.QUOTE_NONE)
    if not text.strip():
        column = names[0] if names else "?"
        raise DataError(f"{path.name}: column '{column}': the file has no rows")
    # The C parser takes one-character separators only; '::' (MovieLens 1M) becomes a tab.
    parse_sep = "\t" if len(sep) > 1 else sep
    body = text.replace(sep, parse_sep) if len(sep) > 1 else text
    has_header = names is None
    try:
        with warnings.catch_warnings():
            # a first data line with extra fields is cut short with only this warning
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(body), sep=parse_sep, header=None if names else 0, names=names,
                dtype=str, keep_default_na=False, na_filter=False, index_col=False,
                skip_blank_lines=False, quoting=quoting, engine="c",
            )
    except pd.errors.ParserWarning:
        line = text.split("\n")[int(has_header)]
        raise DataError(f"{path.name}: column '?': more fields than columns "
                        f"(line {1 + int(has_header)}: {shorten(repr(line))})") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path.name}: column '?': cannot parse the file ({err})") from None
    table = RawTable(path.name, frame, _join_fields(frame, sep), 2 if has_header else 1)
    if len(frame) == 0:
        column = names[0] if names else frame.columns[0]
        raise DataError(f"{path.name}: column '{column}': the file has no data rows "
                        f"(line 1: {shorten(repr(text))})")
    return table


def _join_fields(frame: pd.DataFrame, sep: str) -> Callable[[int], str]:
    """Rebuild a line from its fields (only called when reporting an error)."""
    return lambda pos: sep.join(str(v) for v in frame.iloc[pos].tolist())


def check_mapping(mapping: Mapping | None, allowed: Sequence[str], source: str) -> dict:
    """Options of a converter as a dict; an unknown key is an error naming the valid ones."""
    options = dict(mapping or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise DataError(f"mapping for {source}: unknown key(s) {unknown}; valid keys: {valid}")
    return options


def raw_file(raw: Path, name, source: str, key: str) -> Path:
    """`raw / name` for a file name (or glob pattern) given in the mapping under `key`.

    It must stay inside the raw dir: that is what dataset.json fingerprints, so an edit to a
    file outside it would go unnoticed by `ensure_dataset`.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"mapping for {source}: '{key}' must be a file name, got {name!r}")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise DataError(f"mapping for {source}: '{key}' must name a file inside the raw dir "
                        f"{raw}, got {name!r}")
    return raw / name


def epoch_seconds(times: pd.Series) -> pd.Series:
    """Whole seconds since 1970-01-01 (UTC when tz-aware; fractions dropped), years 1-9999.

    Subtracting a nanosecond Timestamp would overflow past 2262.
    """
    return times.dt.as_unit("us").astype("int64") // 1_000_000


def find_one(raw: Path, patterns: Sequence[str], what: str, option: str) -> Path:
    """The single file in `raw` matching the first pattern that matches anything."""
    if not raw.is_dir():
        raise DataError(f"{raw}: not a directory (expected the raw {what} files)")
    for pattern in patterns:
        found = sorted(raw.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise DataError(f"{raw}: several {what} files ({names}); name one with '{option}'")
    raise DataError(f"{raw}: no {what} file found (looked for {', '.join(patterns)})")


YEAR_IN_TITLE = r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)\s*$"  # "Title (1995)", "Show (2006-2007)"


def year_from_title(titles: pd.Series) -> pd.Series:
    """Release year at the end of a MovieLens title, else None."""
    years = titles.astype("str").str.extract(YEAR_IN_TITLE, expand=False)
    return years.astype(object).where(years.notna(), None)


def split_list(values: pd.Series, sep: str, drop: Sequence[str] = ()) -> pd.Series:
    """'a|b|c' -> ['a', 'b', 'c'] (stripped, empty parts and `drop` values removed); [] -> None."""
    skip = set(drop) | {""}

    def split(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        parts = [p.strip() for p in str(value).split(sep)]
        kept = [p for p in parts if p not in skip]
        return kept or None

    return pd.Series([split(v) for v in values], index=values.index, dtype=object)
