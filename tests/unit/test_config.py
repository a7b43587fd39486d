"""Bad input is reported by the real CLI in one line, exit code 2, before anything is written."""

from __future__ import annotations

import pytest

from llmtune.errors import UserError


def _one_line_error(result) -> str:
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("llmtune: error: ")
    assert "Traceback" not in result.err
    return lines[0]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "x"


def test_unknown_key_suggests_the_closest(cli, out):
    line = _one_line_error(cli("finetune", "trainer.lr_typo=1", f"output_dir={out}"))
    assert "unknown config key" in line
    assert "optimizer.lr" in line
    assert "+trainer.lr_typo=1" in line  # how to add a key on purpose
    assert not out.exists()


def test_misspelt_sibling_key(cli, out):
    line = _one_line_error(cli("finetune", "trainer.max_step=3", f"output_dir={out}"))
    assert "trainer.max_steps" in line
    assert not out.exists()


def test_wrong_group_option_lists_the_options(cli, out):
    line = _one_line_error(cli("finetune", "peft=lorra", f"output_dir={out}"))
    assert "'lora'" in line
    for option in ("bitfit", "lora", "none"):
        assert option in line
    assert not out.exists()


@pytest.mark.parametrize("override", ["trainer.batch_size=abc", "trainer.max_epochs=1.5", "trainer.group_by_length=maybe"])
def test_wrong_type(cli, out, override):
    line = _one_line_error(cli("finetune", override, f"output_dir={out}"))
    key = override.split("=")[0]
    assert key in line
    assert "expected" in line
    if key != "trainer.group_by_length":
        assert "expected an integer" in line
    assert not out.exists()




@pytest.mark.parametrize("override", ["trainer.max_steps=abc", "trainer.save_every=often"])
def test_wrong_type_of_a_key_whose_default_is_null(cli, out, override):
    line = _one_line_error(cli("finetune", override, f"output_dir={out}"))
    assert "expected an integer" in line
    assert override.split("=")[0] in line
    assert not out.exists()


def test_wrong_type_of_the_learning_rate(cli, out):
    line = _one_line_error(cli("finetune", "optimizer.lr=fast", f"output_dir={out}"))
    assert "optimizer.lr" in line
    assert not out.exists()


def test_missing_file_names_the_path(cli, out):
    line = _one_line_error(cli("finetune", "data.train_file=/nope.jsonl", f"output_dir={out}"))
    assert "/nope.jsonl" in line
    assert "data.train_file" in line
    assert not out.exists()


def test_bad_precision_lists_the_choices(cli, out):
    line = _one_line_error(cli("finetune", "trainer.precision=fp8", f"output_dir={out}"))
    for choice in ("no", "bf16", "fp16"):
        assert choice in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("trainer.resume=/no/such/run", "trainer.resume"),
    ],
)
def test_out_of_range_values(cli, out, override, expected):
    line = _one_line_error(cli("finetune", override, f"output_dir={out}"))
    assert expected in line
    assert not out.exists()


def test_bad_value_in_one_sweep_combination(cli, tmp_path):
    out = tmp_path / "sweep"
    line = _one_line_error(cli("finetune", "-m", "trainer.batch_size=2,abc", f"output_dir={out}"))
    assert "expected an integer" in line
    assert not out.exists()


def test_unknown_extension(cli, out, tmp_path):
    data = tmp_path / "train.xlsx"
    data.write_text("text,label\n")
    line = _one_line_error(cli("finetune", f"data.train_file={data}", f"output_dir={out}"))
    assert "train.xlsx" in line
    assert not out.exists()


def test_pretrain_checks_too(cli, out):
    line = _one_line_error(cli("pretrain", "task=mlmm", f"output_dir={out}"))
    assert "'mlm'" in line
    assert not out.exists()


def test_unknown_recipe(cli):
    line = _one_line_error(cli("run", "no-such-recipe"))
    assert "no-such-recipe" in line
    assert "ner-lora" in line  # lists what exists


def test_misspelt_recipe_suggests_the_closest(cli):
    line = _one_line_error(cli("run", "ner-lorra"))
    assert "Did you mean 'ner-lora'" in line


def test_run_without_a_name(cli):
    line = _one_line_error(cli("run", "trainer.max_steps=2"))
    assert "recipe name" in line


def test_recipe_overrides_are_checked(cli, out):
    line = _one_line_error(cli("run", "ner-lora", "trainer.lr_typo=1", f"output_dir={out}"))
    assert "optimizer.lr" in line
    assert not out.exists()


def test_unknown_command_suggests(cli):
    line = _one_line_error(cli("finetun"))
    assert "finetune" in line
    assert "Did you mean" in line


def test_debug_env_raises_instead_of_exiting(cli, out, monkeypatch):
    monkeypatch.setenv("LLMTUNE_DEBUG", "1")
    with pytest.raises(UserError, match="unknown config key"):
        cli("finetune", "trainer.lr_typo=1", f"output_dir={out}")
    with pytest.raises(UserError, match="unknown command"):
        cli("finetun")


def test_help_and_version(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ("pretrain", "finetune", "recipes", "run"):
        assert command in result.out
    result = cli()
    assert result.code == 0 and "usage: llmtune" in result.out
    from llmtune import __version__

    result = cli("--version")
    assert result.code == 0 and __version__ in result.out


def test_cfg_job_prints_the_composed_config(cli, out):
    result = cli("finetune", "task=ner", "peft=lora", f"output_dir={out}", "--cfg", "job")
    assert result.code == 0, result
    import yaml

    cfg = yaml.safe_load(result.out)
    assert cfg["task"]["name"] == "ner"
    assert cfg["peft"]["_target_"].endswith("LoRA")
    assert not out.exists()


def test_tiny_run_arguments_pass_preflight(tiny_ner_args, tiny_cls_args, tiny_mlm_args, tiny_clm_args):
    """The conftest argument lists are valid command lines (checked without training)."""
    from llmtune import config
    from llmtune.paths import conf_dir

    config.register_resolvers()
    for args in (tiny_ner_args, tiny_cls_args, tiny_mlm_args, tiny_clm_args):
        command, overrides = args[0], args[1:]
        assert command in ("finetune", "pretrain")
        config.preflight(str(conf_dir()), command, overrides)
    with pytest.raises(UserError):
        config.preflight(str(conf_dir()), "finetune", [*tiny_ner_args[1:], "trainer.lr_typo=1"])
