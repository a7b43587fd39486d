"""The verbs of `llmtune`: one module per verb, and the folder is the registry.

A verb module `llmtune/commands/<verb>.py` defines:

    HELP = "one line for `llmtune --help`"    # `{tasks}` and `{peft}` become conf/'s options
    USAGE = "..."                              # optional: printed by `llmtune <verb> --help`
    def main(args: list[str]) -> None: ...     # the arguments after the verb

`llmtune.cli` finds the verbs with pkgutil (modules starting with `_` are helpers, not verbs),
so adding a verb is adding its module. Import only the standard library at the top of a verb
module: `llmtune --help` imports every verb to read its HELP and must stay instant; torch,
transformers and friends are imported inside `main`. Verbs that are not Hydra jobs parse
their `PATH key=value ...` arguments with `llmtune.commands._args`. A verb without USAGE
handles `--help` itself (the Hydra verbs leave it to Hydra).
"""
