"""The verbs of `llmtune` (llmtune/commands/): the registry, the shared key=value parser, and the
`validate` and `env` verbs.

- The folder is the registry: every public module is listed in `llmtune --help` with its HELP,
  and a new module becomes a verb with nothing else changed.
- `_args.parse`: types, defaults, dotted keys, a positional; typos and bad values are one line.
- `llmtune validate` runs the preflight only (exit 0 with an `ok:` line, or exit 2 with one
  line) and imports no torch; `llmtune env` reports the installed versions as text or JSON.
"""

from __future__ import annotations

import json
import pkgutil
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import llmtune.commands
from conftest import ASSETS, ROOT
from llmtune.commands._args import describe, parse
from llmtune.errors import UserError

VERBS = sorted(m.name for m in pkgutil.iter_modules(llmtune.commands.__path__) if not m.name.startswith("_"))


# ------------------------------------------------------------------ the registry
def test_help_lists_every_verb_module_with_its_help_line(cli):
    import importlib

    result = cli("--help")
    assert result.code == 0
    listed = {line.split()[0]: line for line in result.out.splitlines() if line.startswith("  ") and line.split()}
    assert {"pretrain", "finetune", "recipes", "run", "bench", "validate", "env"} <= set(VERBS)
    for module in VERBS:
        help_line = importlib.import_module(f"llmtune.commands.{module}").HELP
        verb = module.replace("_", "-")  # sweep_report.py is `llmtune sweep-report`
        assert verb in listed, f"{verb} missing from --help"
        if "{" not in help_line:  # finetune's names conf/'s options, checked in test_model_loading
            assert listed[verb].split(None, 1)[1] == help_line


def test_a_new_verb_module_is_a_verb(cli, tmp_path, monkeypatch):
    (tmp_path / "zz_hello.py").write_text(
        'HELP = "say hello"\n'
        'USAGE = "usage: llmtune zz_hello [NAME]\\n"\n'
        "def main(args):\n"
        '    print("hello " + " ".join(args))\n'
    )
    (tmp_path / "_helper.py").write_text('HELP = "not a verb"\n')
    monkeypatch.setattr(llmtune.commands, "__path__", [*llmtune.commands.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "llmtune.commands.zz_hello", raising=False)
    try:
        out = cli("--help").out
        assert "  zz-hello" in out and "say hello" in out  # a module's `_` reads as `-`
        assert "_helper" not in out and "not a verb" not in out
        # Unknown verbs (known ones in ORDER first) come after the known ones.
        assert out.index("  zz-hello") > out.index("  env")
        assert cli("zz_hello", "world").out == cli("zz-hello", "world").out == "hello world\n"
        assert cli("zz_hello", "--help").out == "usage: llmtune zz_hello [NAME]\n"
        typo = cli("zz_helo")
        assert typo.code == 2 and "Did you mean 'zz-hello'?" in typo.err
    finally:
        sys.modules.pop("llmtune.commands.zz_hello", None)


def test_unknown_verb_and_helper_modules_are_one_line(cli):
    result = cli("fintune", "task=ner")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "Did you mean 'finetune'?" in result.err
    # Modules starting with `_` are helpers: not reachable as verbs.
    assert cli("_args").code == 2
    assert cli("_hydra").code == 2


def test_verb_help_prints_its_usage(cli):
    from llmtune.commands import env, validate

    assert cli("env", "--help").out == env.USAGE
    assert cli("validate", "-h").out == validate.USAGE
    assert "format=text|json" in env.USAGE


def test_light_verbs_import_no_torch(tmp_path):
    """--help (which imports every verb module), a verb's --help and validate stay torch-free."""
    script = (
        "import sys\n"
        "from llmtune.cli import main\n"
        "main(['--help']); print('help', 'torch' in sys.modules)\n"
        "main(['env', '--help']); print('env-help', 'torch' in sys.modules)\n"
        f"main(['validate', 'finetune', 'task=ner', 'peft=lora', 'output_dir={tmp_path / 'run'}'])\n"
        "print('validate', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "help False" in lines and "env-help False" in lines and "validate False False" in lines
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the key=value parser
KEYS = {
    "split": (("validation", "test"), "validation", "the split to score"),
    "batch_size": (int, 32, "examples per forward pass"),
    "threshold": (float, 0.5, "decision threshold"),
    "merge": (bool, False, "merge the adapter"),
    "output": (Path, None, "where to write"),
    "name": (str, "run", "a label"),
    "data.test_file": (Path, None, "a file to score"),
}


def test_parse_converts_each_type_and_fills_defaults():
    args = parse(["final", "batch_size=8", "threshold=0.25", "merge=yes", "output=~/out", "data.test_file=t.jsonl", "split=test"],
                 KEYS, verb="evaluate", positional="PATH")
    assert args.path == "final"
    assert args.batch_size == 8 and isinstance(args.batch_size, int)
    assert args.threshold == 0.25
    assert args.merge is True
    assert args.output == Path("~/out").expanduser() and "~" not in str(args.output)
    assert args["data.test_file"] == Path("t.jsonl")
    assert args.split == "test"
    assert args.name == "run"  # not given: the default
    defaults = parse(["final"], KEYS, verb="evaluate", positional="PATH")
    assert dict(defaults) == {key: spec[1] for key, spec in KEYS.items()}
    assert defaults.path == "final"


@pytest.mark.parametrize("raw,expected", [("true", True), ("False", False), ("1", True), ("off", False), ("ON", True)])
def test_parse_bool_spellings(raw, expected):
    assert parse([f"merge={raw}"], KEYS, verb="export").merge is expected


@pytest.mark.parametrize(
    "arg,fragment",
    [
        ("bach_size=8", "unknown argument 'bach_size'. Did you mean 'batch_size'?"),
        ("data.test_fil=x", "Did you mean 'data.test_file'?"),
        ("test_file=x", "Did you mean 'data.test_file'?"),  # the right leaf without its prefix
        ("--split=test", "Did you mean 'split'?"),
        ("batch_size=eight", "batch_size='eight': expected an integer"),
        ("batch_size=1.5", "batch_size='1.5': expected an integer"),
        ("threshold=high", "threshold='high': expected a number"),
        ("merge=maybe", "merge='maybe': expected true or false"),
        ("output=", "output='': expected a path"),
        ("split=tset", "split=tset: expected one of validation, test. Did you mean 'test'?"),
        ("stray", "unexpected argument 'stray'"),
        ("--help", "put --help right after the command"),
    ],
)
def test_parse_errors_are_one_line(arg, fragment):
    with pytest.raises(UserError) as err:
        parse(["final", arg], KEYS, verb="evaluate", positional="PATH")
    message = str(err.value)
    assert fragment in message, message
    assert "\n" not in message and message.startswith("evaluate: ")


def test_parse_refuses_a_key_given_twice_and_a_missing_positional():
    with pytest.raises(UserError, match="batch_size is given twice"):
        parse(["final", "batch_size=1", "batch_size=2"], KEYS, verb="evaluate", positional="PATH")
    with pytest.raises(UserError, match="needs a PATH"):
        parse(["batch_size=1"], KEYS, verb="evaluate", positional="PATH")
    with pytest.raises(UserError, match="unexpected argument 'final'"):
        parse(["final"], KEYS, verb="env")  # a verb without a positional


def test_a_wrong_declaration_is_the_authors_bug_not_the_users():
    with pytest.raises(TypeError, match="'size'"):
        parse([], {"size": (list, [], "sizes")}, verb="x")
    with pytest.raises(TypeError):
        describe({"size": (int, 1)})


def test_describe_lists_each_key_with_type_and_default():
    lines = describe(KEYS).splitlines()
    assert len(lines) == len(KEYS)
    row = {line.split()[0]: line for line in lines}
    assert "(default: 32)" in row["batch_size=INT"]
    assert "(default: false)" in row["merge=true|false"]
    assert "(default:" not in row["output=PATH"]  # None: no default to show
    assert "split=validation|test" in row


# ------------------------------------------------------------------ llmtune validate
def test_validate_ok_names_task_model_and_peft(cli, tmp_path):
    result = cli("validate", "finetune", "task=ner", "peft=lora", "model=tiny_bert",
                 f"data.train_file={ASSETS / 'ner_train.conll'}", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert result.out == "ok: finetune config is valid (task=ner, model=tiny_bert, peft=lora)\n"
    assert not (tmp_path / "run").exists()  # nothing written


def test_validate_a_recipe_and_a_sweep(cli, tmp_path):
    recipe = cli("validate", "ner-lora", "trainer.max_steps=5", f"output_dir={tmp_path / 'r'}")
    assert recipe.code == 0, recipe.err
    assert recipe.out.startswith("ok: ner-lora config is valid (task=ner,") and "peft=lora" in recipe.out
    # Every combination of a sweep is checked: the bad option is the second value.
    sweep = cli("validate", "finetune", "-m", "peft=none,lorra", f"output_dir={tmp_path / 's'}")
    assert sweep.code == 2 and "Did you mean 'lora'?" in sweep.err


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["finetune", "trainer.max_step=3"], "Did you mean 'trainer.max_steps'?"),
        (["finetune", "trainer.batch_size=big"], "expected an integer"),
        (["finetune", "data.train_file=no/such.conll"], "no such file"),
        (["pretrain", "task=ner"], "llmtune finetune task=ner"),
        (["finetun"], "Did you mean 'finetune'?"),
        (["task=ner"], "needs what to check first"),
        (["finetune", "--cfg", "job"], "unexpected flag '--cfg'"),
    ],
)
def test_validate_errors_are_one_line_with_exit_2(cli, args, fragment):
    result = cli("validate", *args)
    assert result.code == 2
    assert fragment in result.err and result.err.count("\n") == 1, result.err
    assert result.out == ""


# ------------------------------------------------------------------ llmtune env
DISTS = ("torch", "transformers", "peft", "accelerate", "datasets", "hydra-core", "omegaconf", "tokenizers")


def test_env_text_has_one_name_value_line_per_item(cli):
    result = cli("env")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert all(": " in line for line in lines)
    info = dict(line.split(": ", 1) for line in lines)
    assert len(info) == len(lines)  # no name twice
    for dist in DISTS:
        assert info[dist] == version(dist)
    assert info["python"].startswith(platform.python_version())
    assert info["cpu_count"].isdigit()
    assert info["cuda_available"] in ("true", "false")


def test_env_json_matches_the_installed_versions(cli):
    import torch

    result = cli("env", "format=json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    for dist in (*DISTS, "llmtune"):
        assert info[dist] == version(dist)
    assert info["cuda_available"] is torch.cuda.is_available()
    assert info["cuda_device_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert isinstance(info["cuda_devices"], list)
    bad = cli("env", "format=yaml")
    assert bad.code == 2 and "expected one of text, json" in bad.err


def test_env_reports_cuda_devices_as_torch_sees_them(monkeypatch):
    """The CUDA branch, without a GPU: torch.cuda answers as on a two-GPU machine."""
    import torch

    from llmtune.commands import env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    info = env.devices()
    assert info["cuda_available"] is True and info["cuda_device_count"] == 2
    assert info["cuda_devices"] == ["Fake GPU 0", "Fake GPU 1"]
    assert info["cuda_bf16_supported"] is True
    assert env._text(info["cuda_devices"]) == "Fake GPU 0, Fake GPU 1"


def test_a_verb_that_cannot_be_imported_does_not_break_help(cli, tmp_path, monkeypatch):
    (tmp_path / "zz_broken.py").write_text('import no_such_package_xyz\nHELP = "never seen"\n')
    monkeypatch.setattr(llmtune.commands, "__path__", [*llmtune.commands.__path__, str(tmp_path)])
    result = cli("--help")
    assert result.code == 0
    line = next(x for x in result.out.splitlines() if x.strip().startswith("zz-broken"))
    assert "unavailable" in line and "no_such_package_xyz" in line
    assert "  finetune" in result.out
