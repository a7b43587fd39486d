"""Arguments of the verbs that are not Hydra jobs (env, evaluate, predict, export, serve, ...).

Like the rest of the CLI they take `key=value` pairs, after an optional positional (a PATH).
A verb declares its keys once, as `{key: (type, default, help)}`; `parse` checks a command line
against them and `describe` writes the "arguments:" lines of the verb's USAGE:

    KEYS = {
        "split": (("validation", "test"), "validation", "the split to score"),
        "batch_size": (int, 32, "examples per forward pass"),
        "data.test_file": (Path, None, "score this file instead of the run's own test split"),
    }
    USAGE = f"usage: llmtune evaluate PATH [key=value ...]\\n\\narguments:\\n{describe(KEYS)}\\n"

    def main(argv: list[str]) -> None:
        args = parse(argv, KEYS, verb="evaluate", positional="PATH")
        args.path, args.split, args["data.test_file"]    # dotted keys by subscript

Types: str, int, float, bool (true/false, yes/no, on/off, 1/0), Path (`~` expanded, not checked
for existence: the verb knows whether it reads or writes it), or a tuple of the allowed strings.
A default of None means "not given". A misspelt key gets the same one-line did-you-mean as a
config key; a bad value one line naming the key and the expected type. A key given twice is
refused (as Hydra does), rather than the last one silently winning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune.errors import UserError, did_you_mean

# What a value of each type must look like, for error messages and USAGE.
_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
_HINT = {str: "TEXT", int: "INT", float: "NUMBER", bool: "true|false", Path: "PATH"}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
HELP_FLAGS = ("-h", "--help")


class Args(dict):
    """Every declared key -> its value (its default when not given); `.path`: the positional
    argument (None when the verb takes none). Plain keys read as attributes too: `args.split`."""

    def __init__(self, values: dict[str, Any], path: str | None = None) -> None:
        super().__init__(values)
        self.path = path

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def parse(argv: list[str], keys: dict[str, tuple], *, verb: str, positional: str | None = None) -> Args:
    """Check `argv` against the declared `keys`; raise UserError (one line) on the first problem.

    `positional` names the one bare argument the verb requires first (e.g. "PATH"), or None."""
    _check_declared(keys)
    values = {key: default for key, (_, default, _) in keys.items()}
    given: set[str] = set()
    path = None
    for arg in argv:
        key, eq, raw = arg.partition("=")
        if not eq:
            if positional and path is None and not arg.startswith("-"):
                path = arg
                continue
            raise UserError(_unexpected(arg, verb, positional))
        if key not in keys:
            listed = ", ".join(keys) or "none"
            raise UserError(f"{verb}: unknown argument '{key}'.{did_you_mean(key, keys)} Arguments: {listed}; see `llmtune {verb} --help`.")
        if key in given:
            raise UserError(f"{verb}: {key} is given twice; give it once.")
        given.add(key)
        values[key] = convert(key, raw, keys[key][0], verb)
    if positional and path is None:
        raise UserError(f"`llmtune {verb}` needs a {positional} before its key=value arguments; see `llmtune {verb} --help`.")
    return Args(values, path)


def convert(key: str, raw: str, kind: Any, verb: str) -> Any:
    """`raw` as a value of `kind`, or a UserError naming the key and what was expected."""
    if isinstance(kind, tuple):
        if raw in kind:
            return raw
        raise UserError(f"{verb}: {key}={raw}: expected one of {', '.join(kind)}.{did_you_mean(raw, kind)}")
    value: Any = None
    if kind is bool:
        value = _BOOLS.get(raw.strip().lower())
    elif kind is Path:
        value = Path(raw).expanduser() if raw else None
    elif kind is str:
        value = raw
    else:
        try:
            value = kind(raw)
        except ValueError:
            value = None
    if value is None:
        raise UserError(f"{verb}: {key}={raw!r}: expected {_EXPECTED[kind]}. Fix the value on the command line.")
    return value


def describe(keys: dict[str, tuple]) -> str:
    """The "arguments:" lines of a verb's USAGE: `key=TYPE  help (default: ...)`, one key a line."""
    _check_declared(keys)
    rows = []
    for key, (kind, default, text) in keys.items():
        hint = "|".join(kind) if isinstance(kind, tuple) else _HINT[kind]
        shown = str(default).lower() if isinstance(default, bool) else default
        rows.append((f"{key}={hint}", text if default is None else f"{text} (default: {shown})"))
    width = max((len(left) for left, _ in rows), default=0)
    return "\n".join(f"  {left:<{width}}  {right}" for left, right in rows)


def _check_declared(keys: dict[str, tuple]) -> None:
    # A wrong declaration is the verb author's bug, not the user's: a plain TypeError.
    for key, spec in keys.items():
        kind = spec[0]
        if len(spec) != 3 or not (kind in _EXPECTED or (isinstance(kind, tuple) and all(isinstance(c, str) for c in kind))):
            raise TypeError(f"argument {key!r}: declare it as (type, default, help) with type one of str, int, float, bool, Path or a tuple of strings")


def _unexpected(arg: str, verb: str, positional: str | None) -> str:
    if arg in HELP_FLAGS:
        return f"{verb}: put {arg} right after the command: `llmtune {verb} --help`."
    takes = f"a {positional}, then " if positional else ""
    return f"{verb}: unexpected argument '{arg}'; `llmtune {verb}` takes {takes}key=value arguments (see `llmtune {verb} --help`)."
