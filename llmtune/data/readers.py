"""Read a user's data file into a list of row dicts, or fail with one precise line.

Every error names the config key the file came from, the absolute path, and where possible the
1-based line number, so the user can jump straight to the problem.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from llmtune.data import squad
from llmtune.errors import UserError, closest, did_you_mean

SUPPORTED_FORMATS = ("jsonl", "json", "csv", "tsv", "conll", "txt")

_FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".conll": "conll",
    ".bio": "conll",
    ".iob": "conll",
    ".txt": "txt",
}

_DOCSTART = "-DOCSTART-"


def detect_format(path: str | Path, *, key: str = "data.train_file") -> str:
    """The format implied by the file extension of `path`."""
    suffix = Path(path).suffix.lower()
    if suffix in _FORMAT_BY_SUFFIX:
        return _FORMAT_BY_SUFFIX[suffix]
    shown = f"extension '{suffix}'" if suffix else "no extension"
    raise UserError(
        f"{key}: {_absolute(path)} has {shown}, so its format is unknown; "
        f"rename it to end in one of {', '.join(_FORMAT_BY_SUFFIX)}."
        + did_you_mean(suffix, _FORMAT_BY_SUFFIX)
    )


def read_rows(path: str | Path, fmt: str | None = None, *, key: str = "data.train_file") -> list[dict]:
    """Rows of the data file at `path`; `fmt` overrides the format the extension implies."""
    path = _absolute(path)
    fmt = _check_format(fmt, key) if fmt is not None else detect_format(path, key=key)
    text = _read_text(path, key)
    return _PARSERS[fmt](text, path, key)


def require_columns(rows: list[dict], needed: list[str], *, path: str | Path, key: str) -> None:
    """Fail with a did-you-mean when a column in `needed` is absent from `rows`."""
    path = _absolute(path)
    present = _columns(rows)
    for column in needed:
        if column not in present:
            raise UserError(_missing_column_message(column, present, path, key))
        # A column present in the file can still be absent from single rows of a JSON file.
        for number, row in enumerate(rows, start=1):
            if column not in row:
                raise UserError(
                    f"{key}: {path} row {number} has no '{column}' (other rows do); "
                    f"add '{column}' to that row or remove the row."
                )


# --------------------------------------------------------------------------------------------
# Opening the file
# --------------------------------------------------------------------------------------------


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()


def _check_format(fmt: str, key: str) -> str:
    if fmt in SUPPORTED_FORMATS:
        return fmt
    raise UserError(
        f"{key}: unknown data format '{fmt}'; use one of {', '.join(SUPPORTED_FORMATS)}."
        + did_you_mean(fmt, SUPPORTED_FORMATS)
    )


def _read_text(path: Path, key: str) -> str:
    """The decoded file contents; the checks here apply to every format."""
    if not path.exists():
        raise UserError(
            f"{key}: no such file {path}; check the path "
            "(relative paths are resolved from the directory you ran llmtune in)."
        )
    if path.is_dir():
        raise UserError(
            f"{key}: {path} is a directory, not a file; point {key} at a data file inside it."
        )
    data = path.read_bytes()
    try:
        # utf-8-sig drops the byte-order mark some editors on Windows put at the start.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"{key}: {path} line {line} is not valid UTF-8 (byte 0x{data[err.start]:02x}); "
            "re-save the file with UTF-8 encoding."
        ) from None
    if not text.strip():
        raise UserError(f"{key}: {path} is empty; add some data rows or point {key} at another file.")
    return text


def _lines(text: str) -> list[str]:
    """Lines without their line endings. Unlike str.splitlines(), only \\n ends a line, because
    JSON strings may legally hold characters such as U+2028 that splitlines() would break on."""
    return [line.removesuffix("\r") for line in text.split("\n")]


# --------------------------------------------------------------------------------------------
# Parsers: (text, path, key) -> rows
# --------------------------------------------------------------------------------------------


def _parse_jsonl(text: str, path: Path, key: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{key}: {path} line {number} is not valid JSON ({err.msg} at column {err.colno}); "
                "fix or remove that line."
            ) from None
        if not isinstance(value, dict):
            raise UserError(
                f"{key}: {path} line {number} is a JSON {_json_type(value)}, not an object; "
                'write one object per line, e.g. {"text": "...", "label": "..."}.'
            )
        rows.append(value)
    return rows


def _parse_json(text: str, path: Path, key: str) -> list[dict]:
    """A JSON array of objects; a file that does not parse as a whole is read as JSON lines."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):
            # Meant as one array: a line-by-line reading would only complain about the "[".
            raise UserError(
                f"{key}: {path} line {err.lineno} is not valid JSON ({err.msg} at column {err.colno}); "
                "fix that line."
            ) from None
        return _parse_jsonl(text, path, key)
    if squad.is_squad(value):  # SQuAD's nested layout: one row per question
        return squad.squad_rows(value, path, key)
    if isinstance(value, dict):
        raise UserError(
            f"{key}: {path} holds a single JSON object, not a list of rows; "
            "write an array of objects [{...}, {...}] or one object per line."
        )
    if not isinstance(value, list):
        raise UserError(
            f"{key}: {path} holds a JSON {_json_type(value)}; "
            "write an array of objects [{...}, {...}]."
        )
    if not value:
        raise UserError(f"{key}: {path} is an empty JSON array; add some rows.")
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise UserError(
                f"{key}: {path} array item {number} is a JSON {_json_type(item)}, not an object; "
                "every item must be an object such as {\"text\": \"...\"}."
            )
    return value


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _parse_delimited(text: str, path: Path, key: str, delimiter: str) -> list[dict]:
    """CSV or TSV with a header row; every data row must have as many fields as the header."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    name = "tab" if delimiter == "\t" else "comma"
    header: list[str] | None = None
    rows: list[dict] = []
    start = 1  # first line of the record being read; a quoted field may span several lines
    try:
        for fields in reader:
            if fields:
                if header is None:
                    header = _header(fields, path, key)
                elif len(fields) != len(header):
                    raise UserError(
                        f"{key}: {path} line {start} has {len(fields)} fields but the header has "
                        f"{len(header)} ({', '.join(header)}); quote values that contain a {name} "
                        "or fix that row."
                    )
                else:
                    rows.append(dict(zip(header, fields, strict=True)))
            start = reader.line_num + 1
    except csv.Error as err:
        raise UserError(
            f"{key}: {path} line {reader.line_num} cannot be parsed ({err}); fix that line."
        ) from None
    if not rows:
        raise UserError(f"{key}: {path} has a header line but no data rows; add rows below the header.")
    return rows


def _header(fields: list[str], path: Path, key: str) -> list[str]:
    # Spaces after the commas ("text, label") are a common slip; column names never need them.
    header = [field.strip() for field in fields]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(
            f"{key}: {path} header names column '{repeated[0]}' more than once; "
            "give every column a distinct name."
        )
    return header


def _parse_csv(text: str, path: Path, key: str) -> list[dict]:
    return _parse_delimited(text, path, key, ",")


def _parse_tsv(text: str, path: Path, key: str) -> list[dict]:
    return _parse_delimited(text, path, key, "\t")


def _parse_conll(text: str, path: Path, key: str) -> list[dict]:
    """Token-per-line files: token first, tag last, blank line between sentences."""
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    expected: tuple[int, int] | None = None  # (column count, line it was first seen on)
    for number, line in enumerate(_lines(text), start=1):
        columns = line.split()
        if not columns or columns[0] == _DOCSTART:
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        if expected is None:
            if len(columns) < 2:
                raise UserError(
                    f"{key}: {path} line {number} has 1 column, but CoNLL needs at least 2 "
                    "(token first, tag last) separated by spaces or tabs; add the tags."
                )
            expected = (len(columns), number)
        elif len(columns) != expected[0]:
            raise UserError(
                f"{key}: {path} line {number} has {len(columns)} columns but expected {expected[0]} "
                f"like line {expected[1]}; give every token line the same columns."
            )
        tokens.append(columns[0])
        tags.append(columns[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    if not rows:
        raise UserError(f"{key}: {path} has no token lines, only {_DOCSTART} markers; add sentences.")
    return rows


def _parse_txt(text: str, path: Path, key: str) -> list[dict]:
    return [{"text": line} for line in _lines(text) if line.strip()]


_PARSERS = {
    "jsonl": _parse_jsonl,
    "json": _parse_json,
    "csv": _parse_csv,
    "tsv": _parse_tsv,
    "conll": _parse_conll,
    "txt": _parse_txt,
}


# --------------------------------------------------------------------------------------------
# Columns
# --------------------------------------------------------------------------------------------


def _columns(rows: list[dict]) -> list[str]:
    """Column names over all rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _missing_column_message(column: str, present: list[str], path: Path, key: str) -> str:
    listed = ", ".join(present) if present else "none"
    source = closest(column, present) or "<your column>"
    return (
        f"{key}: {path} has no column '{column}' (columns: {listed}).{did_you_mean(column, present)} "
        f"Rename the column or map it with data.columns={{{source}: {column}}}."
    )


# --------------------------------------------------------------------------------------------
# Rows -> a table
# --------------------------------------------------------------------------------------------


def to_dataset(rows: list[dict], *, path: str | Path, key: str, description: str):
    """`rows` as a datasets.Dataset. Arrow needs one type per column, so a column written as a
    number in one row and as text in another (labels 1 and "pos") fails there; the failure is
    turned into one line naming the first row that differs."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo

    try:
        return Dataset.from_list(rows, info=DatasetInfo(description=description))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        path = _absolute(path)
        found = _type_clash(rows, path, key)
        arrow = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            found or f"{key}: {path} does not fit one table ({arrow}); give each column, and each field inside it, one type in every row."
        ) from None


def _kind(value: object) -> str | None:
    """The JSON kind of a value as Arrow sees it: int and float are both numbers, null and the
    empty list fit any column. A list names its items' kind; items of two kinds give 'mixed'."""
    if value is None or value == []:
        return None
    if isinstance(value, list):
        kinds = {k for k in map(_kind, value) if k is not None}
        return f"list of {kinds.pop()}" if len(kinds) == 1 else ("mixed" if kinds else None)
    return {bool: "true/false", int: "number", float: "number", str: "text", dict: "object"}.get(type(value), type(value).__name__)


def _type_clash(rows: list[dict], path: Path, key: str) -> str | None:
    """One line naming the first row whose column differs in kind from the same column in an
    earlier row (or mixes kinds inside one list); None when no such row is found."""
    first: dict[str, tuple[str, int, object]] = {}
    for number, row in enumerate(rows, start=1):
        for column, value in row.items():
            kind = _kind(value)
            if kind == "mixed":
                return (
                    f"{key}: {path} row {number} mixes kinds (numbers, text, ...) inside '{column}': {value!r:.60}; "
                    "write every item the same way, e.g. all as text."
                )
            seen = first.setdefault(column, (kind, number, value)) if kind else None
            if seen and seen[0] != kind:
                return (
                    f"{key}: {path} row {number} has '{column}' {value!r:.40} ({kind}) but row {seen[1]} has {seen[2]!r:.40} ({seen[0]}); "
                    f"write '{column}' the same way in every row (e.g. labels all as text: \"1\", not 1)."
                )
    return None
