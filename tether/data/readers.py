"""Reading rows of data from the files users already have: JSONL, JSON, CSV, Parquet, or a
Hugging Face ``datasets`` folder (``save_to_disk``; a ``Dataset`` or one split of a
``DatasetDict``).

Every row carries where it came from (``prefs.jsonl:17``) so that a malformed field can be
reported as ``prefs.jsonl:17: field "chosen" is empty``. Line-based formats (JSONL, JSON, CSV)
give the line the row starts on; columnar ones (Parquet, datasets) give ``row N`` (1-based).
A line that is not even parseable becomes a row with ``error`` set, so ``--skip-bad-rows``
treats it like any other bad row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tether.errors import DataError

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Row:
    """One input record."""

    where: str  # "prefs.jsonl:17" or "prefs.parquet:row 17": prefix of every error message
    data: dict[str, Any] = field(default_factory=dict)
    textual: bool = False  # True for CSV: every cell is a string, numbers and lists still encoded
    error: str | None = None  # set when the row itself could not be parsed


def read_records(path_or_name: str | Path, split: str | None = None) -> tuple[list[Row], str]:
    """The rows of a file of records (demonstrations, preferences) and its name for messages
    (``prefs.jsonl``, ``data[test]``); a DataError when it has none."""
    source = f"{path_or_name}" + (f"[{split}]" if split else "")
    rows = read_rows(path_or_name, split)
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows, source


def read_rows(path_or_name: str | Path, split: str | None = None) -> list[Row]:
    """All rows of a data file or ``datasets`` folder. Raises ``DataError`` (naming the file)
    when it does not exist, cannot be read, or has an unknown format."""
    path = Path(path_or_name).expanduser()
    label = str(path_or_name)
    if not path.exists():
        from tether.utils.hub import hub_dataset, looks_like_hub_dataset

        if looks_like_hub_dataset(label):  # a Hub data set: from the HF cache, or fetched once when online
            return [_as_row(record, f"{label}[{split or 'train'}]:row {n}")
                    for n, record in enumerate(hub_dataset(label, split), start=1)]
        raise DataError(f"{label}: file not found")
    if path.is_dir():
        return list(_read_dataset_folder(path, label, split))
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FILE_FORMATS))
        raise DataError(f"{label}: unknown file type '{path.suffix}' (expected one of {known}, or a datasets folder)")
    if split is not None:
        raise DataError(f"{label}: split '{split}' given, but only a datasets folder has splits")
    try:
        if fmt == "parquet":
            return list(_read_parquet(path, label))
        # bytes decoded as they are: no newline translation, which would turn a "\r" inside a
        # quoted CSV cell into "\n"; utf-8-sig drops the byte-order mark Excel writes first
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot read: {exc.strerror or exc}") from None
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[fmt]
    return list(reader(text, label))


def lines(text: str) -> list[str]:
    """The lines of a text file, split at "\n" (and "\r\n") only. ``str.splitlines`` also
    splits at U+2028, U+0085 and other characters that a JSON string holds unescaped when
    written with ``ensure_ascii=False`` (as ``tether label export`` does): a row holding one
    would be cut in two and lost."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_jsonl(text: str, label: str) -> Iterator[Row]:
    for number, line in enumerate(lines(text), start=1):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Row(where, error=f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield Row(where, error="invalid JSON (nested too deeply)")
            continue
        yield _as_row(record, where)


def _read_json(text: str, label: str) -> Iterator[Row]:
    """A top-level JSON list of objects, decoded one element at a time so that each row knows
    the line it starts on. The whole file must be valid JSON: a syntax error is fatal."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{label}: invalid JSON (nested too deeply)") from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if not text.startswith("[", pos):
        raise DataError(f"{label}: expected a JSON list of objects at the top level")
    pos = _skip_ws(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        record, end = decoder.raw_decode(text, pos)
        yield _as_row(record, f"{label}:{text.count(chr(10), 0, pos) + 1}")
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(text: str, label: str) -> Iterator[Row]:
    # a response may be longer than the csv module's default cell limit of 128 KiB
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))  # newline="": the csv module's own line ends
    try:
        if not reader.fieldnames:
            return
        start = 2  # line of the first record (after the header)
        for record in reader:
            yield Row(f"{label}:{start}", {k: v for k, v in record.items() if k is not None}, textual=True)
            start = reader.line_num + 1  # a quoted cell may span lines: the next record starts after
    except csv.Error as exc:
        raise DataError(f"{label}:{reader.line_num}: invalid CSV ({exc})") from None


def _read_parquet(path: Path, label: str) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{label}: reading Parquet needs pyarrow: pip install 'tether[data]'") from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{label}: cannot read Parquet: {exc}") from None
    for number, record in enumerate(records, start=1):
        yield _as_row(record, f"{label}:row {number}")


def _read_dataset_folder(path: Path, label: str, split: str | None) -> Iterator[Row]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{label}: reading a datasets folder needs datasets: pip install 'tether[data]'") from None
    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError, or datasets' own errors for a foreign folder
        raise DataError(f"{label}: not a Hugging Face datasets folder (save_to_disk): {exc}") from None
    if isinstance(dataset, DatasetDict):
        splits = list(dataset)
        if split is None:
            if "train" not in dataset:
                raise DataError(f"{label}: a DatasetDict with splits {splits}: name one with split=")
            split = "train"
        if split not in dataset:
            raise DataError(f"{label}: no split '{split}' (available: {', '.join(splits)})")
        dataset, label = dataset[split], f"{label}[{split}]"
    elif split is not None:
        raise DataError(f"{label}: split '{split}' given, but the folder holds a single Dataset")
    for number, record in enumerate(dataset, start=1):
        yield _as_row(record, f"{label}:row {number}")


def _as_row(record: Any, where: str) -> Row:
    if not isinstance(record, dict):
        return Row(where, error=f"expected an object with named fields, got {type_name(record)}")
    return Row(where, dict(record))


def type_name(value: Any) -> str:
    """JSON-flavoured type names for error messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )
