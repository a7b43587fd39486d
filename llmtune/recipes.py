"""`llmtune recipes`: name, description and the command each shipped recipe stands for.

The command is derived from the recipe itself (its defaults list and values), so it cannot
drift from what the recipe does.
"""

from __future__ import annotations

import yaml

from llmtune.paths import recipes_dir


def describe(name: str) -> tuple[str, str]:
    """(one-line description, equivalent command) of recipes/<name>.yaml."""
    path = recipes_dir() / f"{name}.yaml"
    text = path.read_text()
    description = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("# description:")), "")
    body = yaml.safe_load(text) or {}
    command, parts = "finetune", []
    for entry in body.pop("defaults", []):
        if isinstance(entry, str) and entry.strip("/") in primary_configs():
            command = entry.strip("/")
        elif isinstance(entry, dict):
            for key, value in entry.items():
                parts.append(f"{key.replace('override', '').strip().strip('/')}={value}")
    parts += [f"{k}={v}" for k, v in _flatten(body)]
    return description, " ".join(["llmtune", command, *parts])


def primary_configs() -> list[str]:
    """The primary configs in conf/ (finetune, pretrain, continual): a recipe extends one, and
    the verb of that name runs it."""
    from llmtune.paths import conf_dir

    return sorted(p.stem for p in conf_dir().glob("*.yaml"))


def command_of(name: str) -> str:
    """The verb that runs recipes/<name>.yaml (the primary config it extends)."""
    return describe(name)[1].split()[1]


def _flatten(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def print_recipes() -> None:
    from llmtune.paths import recipe_names
    from llmtune.ui.console import print_table, rows_table

    rows = [(name, *describe(name)) for name in recipe_names()]
    print_table(rows_table("recipes (run one with `llmtune run NAME` + overrides)", ["name", "description", "command"], rows))
