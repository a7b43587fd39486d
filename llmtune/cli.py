"""The `llmtune` command: a registry of verbs, one module each in llmtune/commands/.

The folder is the registry: every module of llmtune.commands not starting with `_` is a verb
(see llmtune/commands/__init__.py for what a verb module defines). Imports here stay light
(stdlib, then only the chosen verb's module) so `llmtune --help` answers instantly; torch and
transformers load inside the verb.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: llmtune <command> [arguments]

commands:
{commands}

examples:
  llmtune finetune task=ner peft=lora
  llmtune finetune -m optimizer.lr=1e-4,3e-4 peft=none,lora
  llmtune pretrain task=clm trainer.max_steps=200
  llmtune validate finetune task=ner data.train_file=train.conll   # check, run nothing
  llmtune finetune --cfg job          # print the composed config and exit
  llmtune finetune --help             # config groups, their options and Hydra flags
  llmtune <command> --help            # one command's arguments

Every key is a Hydra override or a key=value argument; a wrong key or option is reported with
the closest valid one. Set LLMTUNE_DEBUG=1 for full tracebacks.
"""
# Where the known verbs stand in `llmtune --help` (the workflow's order); any other verb in
# llmtune/commands/ follows, alphabetically.
ORDER = ("pretrain", "finetune", "recipes", "run", "sweep-report", "compare", "validate", "inspect", "evaluate", "predict", "export", "serve", "plot", "bench", "env")
HELP_FLAGS = ("-h", "--help")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in (*HELP_FLAGS, "help"):
        print(usage(), end="")
        return
    if argv[0] in ("-V", "--version"):
        from llmtune import __version__

        print(f"llmtune {__version__}")
        return
    verb, rest = argv[0], argv[1:]
    try:
        command = load(verb)
        # `llmtune VERB --help`: the verb's USAGE; a verb without one (the Hydra jobs, bench)
        # answers --help itself.
        if rest[:1] and rest[0] in HELP_FLAGS and getattr(command, "USAGE", None):
            print(command.USAGE, end="")
            return
        command.main(rest)
    except Exception as exc:  # noqa: BLE001 — only UserError is turned into one line
        _exit_on_user_error(exc)
        raise


def verbs() -> list[str]:
    """The verbs: the public modules of llmtune.commands, known ones in ORDER, then the rest.
    A module name's `_` reads as `-` in the verb (sweep_report.py is `llmtune sweep-report`)."""
    import pkgutil

    import llmtune.commands

    names = {m.name.replace("_", "-") for m in pkgutil.iter_modules(llmtune.commands.__path__) if not m.name.startswith("_")}
    return [v for v in ORDER if v in names] + sorted(names.difference(ORDER))


def load(verb: str):
    """The module of `verb`, or a UserError with the closest verb."""
    import importlib

    from llmtune.errors import UserError, did_you_mean

    names = verbs()
    if verb.replace("_", "-") not in names:  # `sweep_report` works too
        raise UserError(f"unknown command '{verb}'.{did_you_mean(verb.replace('_', '-'), names)} Commands: {', '.join(names)}; see `llmtune --help`.")
    return importlib.import_module(f"llmtune.commands.{verb.replace('-', '_')}")


def usage() -> str:
    """USAGE with one line per verb (its HELP); `{tasks}` and `{peft}` in a HELP become the
    options read from conf/ (the folder is the registry there too)."""
    from llmtune.paths import group_options

    names = verbs()
    width = max(map(len, names))
    lines = []
    for name in names:
        try:
            text = str(getattr(load(name), "HELP", ""))
        except ImportError as exc:  # one verb's missing dependency must not take --help down
            text = f"(unavailable: {exc})"
        text = text.replace("{tasks}", "|".join(group_options("task"))).replace("{peft}", "|".join(group_options("peft")))
        lines.append(f"  {name:<{width}}  {text}".rstrip())
    return USAGE.format(commands="\n".join(lines))


def _exit_on_user_error(exc: BaseException) -> None:
    from llmtune.errors import UserError

    if isinstance(exc, UserError) and not os.environ.get("LLMTUNE_DEBUG"):
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        where = f" (rank {rank})" if rank is not None else ""
        print(f"llmtune: error{where}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
