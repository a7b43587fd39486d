"""Reading user data files: every format parses, every mistake names the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmtune.data.readers import SUPPORTED_FORMATS, detect_format, read_rows, require_columns
from llmtune.errors import UserError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        read_rows(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- detecting the format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.jsonl", "jsonl"), ("a.JSON", "json"), ("a.csv", "csv"), ("a.tsv", "tsv"),
     ("a.conll", "conll"), ("a.bio", "conll"), ("a.iob", "conll"), ("a.txt", "txt")],
)
def test_detect_format_from_extension(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert fmt in SUPPORTED_FORMATS


def test_unknown_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.xlsx", "x")
    message = _error(path)
    assert message.startswith(f"data.train_file: {path} ")
    assert ".jsonl" in message and ".conll" in message


def test_unknown_format_override_suggests_a_known_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.data", "a,b\n1,2\n")
    assert "Did you mean 'csv'?" in _error(path, fmt="cvs")
    assert read_rows(path, fmt="csv") == [{"a": "1", "b": "2"}]


# -- valid files ------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b\u2028c", "label": 0}\n')
    assert read_rows(path) == [{"text": "a", "label": 1}, {"text": "b\u2028c", "label": 0}]


def test_json_array_of_objects(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.json", '[\n  {"text": "a"},\n  {"text": "b"}\n]\n')
    assert read_rows(path) == [{"text": "a"}, {"text": "b"}]


def test_json_file_with_one_object_per_line_falls_back_to_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.json", '{"text": "a"}\n{"text": "b"}\n')
    assert read_rows(path) == [{"text": "a"}, {"text": "b"}]


def test_csv_with_quoted_commas_keeps_strings(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", 'text, label\n"good, really",1\nbad,0\n')
    assert read_rows(path) == [{"text": "good, really", "label": "1"}, {"text": "bad", "label": "0"}]


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.tsv", "text\tlabel\r\nfine, thanks\tpos\r\n")
    assert read_rows(path) == [{"text": "fine, thanks", "label": "pos"}]


def test_conll_uses_first_and_last_column_and_skips_docstart(tmp_path: Path) -> None:
    content = "-DOCSTART- -X- O O\n\nAnna NNP B-NP B-PER\nsings VBZ B-VP O\n\n\nOslo NNP B-NP B-LOC\n"
    path = _write(tmp_path, "t.conll", content)
    assert read_rows(path) == [
        {"tokens": ["Anna", "sings"], "tags": ["B-PER", "O"]},
        {"tokens": ["Oslo"], "tags": ["B-LOC"]},
    ]


def test_txt_one_row_per_non_blank_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.txt", "First line.\n\n  \nSecond line.\r\n")
    assert read_rows(path) == [{"text": "First line."}, {"text": "Second line."}]


def test_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "\ufefftext,label\nhi,pos\n")
    assert read_rows(path) == [{"text": "hi", "label": "pos"}]


@pytest.mark.parametrize(
    ("name", "count", "columns"),
    [("ner_train.conll", 12, {"tokens", "tags"}), ("ner_dev.conll", 12, {"tokens", "tags"}),
     ("cls_train.jsonl", 16, {"text", "label"}), ("cls_dev.jsonl", 16, {"text", "label"}),
     ("cls_train.csv", 16, {"text", "label"}), ("corpus.txt", 40, {"text"})],
)
def test_assets_parse(name: str, count: int, columns: set[str]) -> None:
    rows = read_rows(ASSETS / name)
    assert len(rows) == count
    assert all(set(row) == columns for row in rows)


def test_csv_asset_matches_jsonl_asset() -> None:
    assert read_rows(ASSETS / "cls_train.csv") == read_rows(ASSETS / "cls_train.jsonl")


# -- mistakes ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    message = _error(path, key="data.eval_file")
    assert message.startswith(f"data.eval_file: no such file {path};")
    assert "relative paths" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.mkdir()
    assert f"{path} is a directory" in _error(path)


@pytest.mark.parametrize("name", ["t.jsonl", "t.csv", "t.conll", "t.txt"])
def test_empty_or_blank_file(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, "\n  \n")
    assert f"data.train_file: {path} is empty;" in _error(path)


def test_malformed_jsonl_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", '{"text": "a"}\n\n{"text": "b" "label": 1}\n')
    message = _error(path)
    assert message == (
        f"data.train_file: {path} line 3 is not valid JSON "
        "(Expecting ',' delimiter at column 14); fix or remove that line."
    )


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.jsonl", '{"text": "a"}\n["b"]\n')
    assert f"{path} line 2 is a JSON array, not an object" in _error(path)


def test_broken_json_array_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.json", '[\n  {"text": "a"},\n  {"text": }\n]\n')
    assert f"{path} line 3 is not valid JSON" in _error(path)


def test_json_array_item_that_is_not_an_object(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.json", '[{"text": "a"}, "b"]')
    assert f"{path} array item 2 is a JSON string" in _error(path)


def test_csv_row_with_extra_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "text,label\ngood,pos\n\nbad, really,neg\n")
    message = _error(path)
    assert f"data.train_file: {path} line 4 has 3 fields but the header has 2 (text, label)" in message


def test_csv_line_number_counts_quoted_newlines(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", 'text,label\n"two\nlines",pos\nshort\n')
    assert f"{path} line 4 has 1 fields" in _error(path)


def test_csv_header_only(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.csv", "text,label\n")
    assert "no data rows" in _error(path)


def test_conll_wrong_column_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.conll", "Anna B-PER\nsings O\n\nOslo NNP B-LOC\n")
    message = _error(path)
    assert f"data.train_file: {path} line 4 has 3 columns but expected 2 like line 1" in message


def test_conll_without_tags(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.conll", "Anna\nsings\n")
    assert f"{path} line 1 has 1 column" in _error(path)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "t.txt", "fine\nalso fine\ncaf\xe9\n".encode("latin-1"))
    assert f"{path} line 3 is not valid UTF-8" in _error(path)


# -- required columns -------------------------------------------------------------------------


def test_require_columns_passes_when_present(tmp_path: Path) -> None:
    require_columns([{"text": "a", "label": "b"}], ["text", "label"], path=tmp_path / "t.csv", key="k")


def test_missing_column_suggests_the_close_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.csv", "text,labl\nhi,pos\n")
    rows = read_rows(path)
    with pytest.raises(UserError) as info:
        require_columns(rows, ["text", "label"], path=path, key="data.train_file")
    assert str(info.value) == (
        f"data.train_file: {path} has no column 'label' (columns: text, labl). Did you mean 'labl'? "
        "Rename the column or map it with data.columns={labl: label}."
    )


def test_missing_column_without_close_match(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"has no column 'tags' \(columns: sentence\)\. Rename"):
        require_columns([{"sentence": "a"}], ["tags"], path=tmp_path / "t.jsonl", key="data.train_file")


def test_column_missing_from_one_row(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "x"}, {"text": "b"}]
    with pytest.raises(UserError, match=r"t\.jsonl row 2 has no 'label'"):
        require_columns(rows, ["text", "label"], path=tmp_path / "t.jsonl", key="data.train_file")
