"""Where the shipped config tree and recipes live, installed or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # The wheel carries conf/ and recipes/ inside the package; an editable install or a source
    # checkout has them one level up, at the repository's top.
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"llmtune is installed without its {name}/ folder (looked in {_PKG})")


def conf_dir() -> Path:
    return _find("conf")


def recipes_dir() -> Path:
    return _find("recipes")


def config_groups() -> list[str]:
    """The config groups: one folder per group under conf/ (the folder is the registry)."""
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def recipe_names() -> list[str]:
    """recipes/NAME.yaml and recipes/FOLDER/NAME.yaml (named FOLDER/NAME, e.g. sweeps/ner-lora-optuna)."""
    root = recipes_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
