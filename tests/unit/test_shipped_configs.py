"""Every shipped config composes and validates: each option of each group, and each recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llmtune import config as llmtune_config
from llmtune.paths import conf_dir, config_groups, group_options, recipe_names, recipes_dir

CONF = conf_dir()
RECIPES = recipes_dir()
PRETRAIN_TASKS = set(llmtune_config.pretraining_tasks())  # is_pretraining: true in conf/task/


def _compose(config_dir: Path, name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    llmtune_config.register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name=name, overrides=overrides)


def _group_cases():
    cases = []
    for group in config_groups():
        for option in group_options(group):
            if group == "task":
                primaries = ["pretrain"] if option in PRETRAIN_TASKS else ["finetune"]
            elif group == "continual":  # the methods of conf/continual.yaml's sequences
                primaries = ["continual"]
            else:
                primaries = ["finetune", "pretrain"]
            cases += [pytest.param(p, group, option, id=f"{p}-{group}={option}") for p in primaries]
    return cases


def test_the_tree_has_the_documented_groups():
    assert {"model", "task", "data", "peft", "optimizer", "scheduler", "trainer"} <= set(config_groups())
    assert {"ner", "classification", "mlm", "clm"} <= set(group_options("task"))
    assert {"none", "lora", "bitfit"} <= set(group_options("peft"))
    assert {"tiny_bert", "tiny_llama"} <= set(group_options("model"))


@pytest.mark.parametrize(("primary", "group", "option"), _group_cases())
def test_every_group_option_composes_and_validates(primary, group, option):
    import torch

    from llmtune.errors import UserError

    cfg = _compose(CONF, primary, [f"{group}={option}"])
    if (group, option) == ("peft", "qlora") and not torch.cuda.is_available():
        with pytest.raises(UserError, match="needs a CUDA GPU"):  # its preflight, on a machine without one
            llmtune_config.validate(cfg)
        return
    # Prompt learning refuses some default tasks (prefix: all but causal LMs; the others: masked LM); a decoder task takes it.
    if group == "peft" and (option == "prefix" or (option in ("prompt_tuning", "p_tuning") and primary == "pretrain")):
        with pytest.raises(UserError, match=f"peft={option}"):
            llmtune_config.validate(cfg)
        cfg = _compose(CONF, primary, [f"{group}={option}", f"task={'clm' if primary == 'pretrain' else 'sft'}", "model=tiny_llama"])
    llmtune_config.validate(cfg)
    assert cfg.command == primary
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["output_dir"]
    for key in ("model", "task", "data", "peft", "optimizer", "scheduler", "trainer"):
        assert key in resolved


@pytest.mark.parametrize("primary", ["finetune", "pretrain"])
def test_primary_defaults(primary):
    cfg = _compose(CONF, primary, [])
    llmtune_config.validate(cfg)
    if primary == "pretrain":
        assert cfg.task.name == "mlm"
        assert cfg.model.config.model_type == "bert"  # small_${task} -> small_mlm
        clm = _compose(CONF, primary, ["task=clm"])
        assert clm.model.config.model_type == "llama"  # small_clm follows the task
    else:
        assert cfg.model.name_or_path  # a pretrained model


@pytest.mark.parametrize("option", group_options("task"))
def test_task_configs_instantiate(option):
    from hydra.utils import instantiate

    primary = "pretrain" if option in PRETRAIN_TASKS else "finetune"
    task = instantiate(_compose(CONF, primary, [f"task={option}"]).task)
    for attr in ("name", "auto_class", "peft_task_type", "main_metric", "greater_is_better", "max_length", "required_columns"):
        assert hasattr(task, attr), attr
    assert task.name == option


@pytest.mark.parametrize("option", group_options("peft"))
def test_peft_configs_instantiate(option):
    from hydra.utils import instantiate

    method = instantiate(_compose(CONF, "finetune", [f"peft={option}"]).peft)
    assert method.method == option
    assert callable(method.apply) and callable(method.save)


@pytest.mark.parametrize("group", ["optimizer", "scheduler"])
def test_optimizer_and_scheduler_configs_build(group):
    import torch
    from hydra.utils import instantiate

    for option in group_options(group):
        cfg = _compose(CONF, "finetune", [f"{group}={option}"])
        params = [torch.nn.Parameter(torch.zeros(2, 2))]
        # lr may be null in the config: the builder then passes the PEFT method's default rate.
        lr = cfg.optimizer.lr if cfg.optimizer.lr is not None else 1e-3
        optimizer = instantiate(cfg.optimizer, lr=lr)(params)
        assert optimizer.param_groups[0]["lr"] == lr
        scheduler = instantiate(cfg.scheduler)(optimizer, num_training_steps=10)
        for _ in range(10):
            optimizer.step()
            scheduler.step()
        assert 0 <= scheduler.get_last_lr()[0] <= lr


def test_there_are_recipes():
    assert recipe_names()


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_composes_and_validates(name):
    cfg = _compose(RECIPES, name, [f"hydra.searchpath=[file://{CONF}]"])
    llmtune_config.validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)
    if cfg.command == "continual":  # its stages pick their tasks (tests/integration/test_continual.py)
        return
    assert cfg.command in ("finetune", "pretrain")
    expected = "pretrain" if cfg.task.name in PRETRAIN_TASKS else "finetune"
    assert cfg.command == expected


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_matches_its_description(name):
    from llmtune.recipes import describe

    description, command = describe(name)
    assert description
    assert command.startswith("llmtune ")
    cfg = _compose(RECIPES, name, [f"hydra.searchpath=[file://{CONF}]"])
    assert command.split()[1] == cfg.command
    assert f"task={cfg.task.name}" in command or cfg.task.name == ("mlm" if cfg.command == "pretrain" else "classification")


@pytest.mark.parametrize("path", sorted(CONF.rglob("*.yaml")) + sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_files_are_commented(path):
    text = path.read_text()
    assert text.lstrip().startswith("#"), f"{path} should start with a comment saying what it is"
