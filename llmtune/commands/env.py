"""`llmtune env`: what a bug report needs — versions, platform, CPUs and accelerators."""

from __future__ import annotations

from llmtune.commands._args import describe

HELP = "versions, platform and devices, for bug reports (format=json for JSON)"
KEYS = {"format": (("text", "json"), "text", "text: one `name: value` a line; json: one JSON object")}
USAGE = f"""\
usage: llmtune env [format=text|json]

Prints the versions of Python, llmtune and the libraries it runs on (plus the optional ones that
are installed), the platform, the CPU count and the accelerators torch sees. Paste it into a bug
report.

arguments:
{describe(KEYS)}
"""
# Distribution names (as pip knows them) always reported, then the optional ones when installed.
PACKAGES = ("llmtune", "torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "omegaconf", "tokenizers")
OPTIONAL = ("bitsandbytes", "fastapi", "uvicorn", "deepspeed")


def main(args: list[str]) -> None:
    import json

    from llmtune.commands._args import parse

    fmt = parse(args, KEYS, verb="env").format
    info = collect()
    if fmt == "json":
        print(json.dumps(info, indent=2))
    else:
        print("\n".join(f"{name}: {_text(value)}" for name, value in info.items()))


def collect() -> dict:
    """name -> value (str, int, bool, list or None), in the order they are printed."""
    import os
    import platform

    info: dict = {"python": f"{platform.python_version()} ({platform.python_implementation()})"}
    for dist in PACKAGES:
        info[dist] = _version(dist) or "not installed"
    if info["llmtune"] == "not installed":  # run from a source checkout without installing
        from llmtune import __version__

        info["llmtune"] = f"{__version__} (not installed)"
    for dist in OPTIONAL:
        if _version(dist):
            info[dist] = _version(dist)
    info["platform"] = platform.platform()
    info["machine"] = platform.machine()
    info["cpu_count"] = os.cpu_count()
    info.update(devices())
    return info


def devices() -> dict:
    """What torch sees: CUDA (count, names, bf16) and Apple MPS. Importing torch is the slow part."""
    try:
        import torch
    except ImportError as exc:
        return {"cuda_available": None, "devices": f"unknown (torch cannot be imported: {exc})"}
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "mps_available": bool(mps and mps.is_available()),
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _text(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return str(value)
