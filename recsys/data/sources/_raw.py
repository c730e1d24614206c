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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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

    def ints(self, column: str) -> pd.Series:
        """An int64 column; anything that is not a whole number is an error."""
        self.require(column)
        number = pd.to_numeric(self.frame[column], errors="coerce")
        bad = number.isna() | (number % 1 != 0)
        self._fail_where(column, bad, "cannot parse {!r} as an integer")
        return number.astype("int64")

    def floats(self, column: str) -> pd.Series:
        self.require(column)
        number = pd.to_numeric(self.frame[column], errors="coerce")
        self._fail_where(column, number.isna(), "cannot parse {!r} as a number")
        return number.astype("float32")

    def _fail_where(self, column: str, bad: pd.Series, problem: str) -> None:
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            value = self.frame[column].iloc[pos]
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
    try:
        frame = pd.read_csv(
            io.StringIO(body), sep=parse_sep, header=None if names else 0, names=names,
            dtype=str, keep_default_na=False, na_filter=False, index_col=False,
            skip_blank_lines=False, quoting=quoting, engine="c",
        )
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path.name}: column '?': cannot parse the file ({err})") from None
    has_header = names is None
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
