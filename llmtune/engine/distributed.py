"""The `distributed` config group -> accelerate plugins: DDP knobs, FSDP2, DeepSpeed ZeRO.

One place for everything multi-process that is not the loop itself:

    check(cfg)              config rules (cheap, no environment): called by config.validate
    plugin_kwargs(cfg)      the keyword arguments of accelerate's plugin for the chosen strategy
    accelerator_kwargs(cfg) the plugin objects for Accelerator(...), after checking that this
                            machine can run the strategy (DeepSpeed installed, a GPU present)
    finish_setup(acc, ...)  what accelerate leaves undone (FSDP on CPU, see below)
    full_weights(model, acc)  the whole model gathered for final/ (every process must call it)

`distributed=none` (the default) adds nothing: one process, or plain DDP under torchrun /
accelerate launch, exactly as before this group existed.
"""

from __future__ import annotations

import logging
import os

from llmtune.errors import UserError

log = logging.getLogger("llmtune")

STRATEGIES = ("none", "ddp", "fsdp", "deepspeed")
OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def world_size() -> int:
    """Processes in this launch (torchrun and accelerate launch both set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# --------------------------------------------------------------------------- config rules
def check(cfg) -> None:
    """Rules on the composed config that need no GPU or package; raise UserError on the first."""
    d = cfg.get("distributed")
    if d is None:
        return
    strategy = d.get("strategy")
    if strategy not in STRATEGIES:
        raise UserError(f"distributed.strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}; pick an option with distributed=<name>.")
    if strategy == "fsdp":
        _check_fsdp(d, cfg.trainer)
    if strategy == "deepspeed":
        _check_deepspeed(d, cfg.trainer)


def _check_fsdp(d, trainer) -> None:
    classes = d.get("wrap_classes")
    if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes)):
        raise UserError(f"distributed.wrap_classes={classes}: expected a list of module class names, e.g. distributed.wrap_classes=[BertLayer], or null.")
    if d.activation_checkpointing and trainer.get("gradient_checkpointing"):
        raise UserError("distributed.activation_checkpointing and trainer.gradient_checkpointing are both on; they do the same thing, so turn one off.")


def _check_deepspeed(d, trainer) -> None:
    if d.zero_stage not in (2, 3):
        raise UserError(f"distributed.zero_stage={d.zero_stage}: llmtune ships ZeRO stages 2 and 3 (distributed=deepspeed_zero2 or deepspeed_zero3).")
    for key in ("offload_optimizer", "offload_params"):
        if d[key] not in OFFLOAD_DEVICES:
            raise UserError(f"distributed.{key}={d[key]!r}: expected one of {', '.join(OFFLOAD_DEVICES)}.")
    if d.offload_params != "none" and d.zero_stage != 3:
        raise UserError("distributed.offload_params needs ZeRO stage 3 (only stage 3 shards parameters); use distributed=deepspeed_zero3.")
    if "nvme" in (d.offload_optimizer, d.offload_params) and not d.nvme_path:
        raise UserError("distributed: offload to nvme needs distributed.nvme_path=<a folder on a fast local disk>.")
    # DeepSpeed steps its optimizer itself at every accumulation boundary and scales the loss
    # by its own step count; the loop already normalises a step's loss over all of its
    # micro-batches, so the two would disagree for grad_accum > 1.
    if trainer.grad_accum != 1:
        raise UserError(f"trainer.grad_accum={trainer.grad_accum}: distributed=deepspeed_* runs with trainer.grad_accum=1; raise trainer.batch_size (or the process count) instead.")


# --------------------------------------------------------------------------- plugin kwargs
def plugin_kwargs(cfg) -> dict:
    """Keyword arguments for the strategy's accelerate class (none: {}):
    ddp -> DistributedDataParallelKwargs, fsdp -> FullyShardedDataParallelPlugin,
    deepspeed -> DeepSpeedPlugin. Pure: no environment checks, nothing imported."""
    d, t = cfg.distributed, cfg.trainer
    if d.strategy == "ddp":
        return {
            "find_unused_parameters": bool(d.find_unused_parameters),
            "bucket_cap_mb": int(d.bucket_cap_mb),
            "gradient_as_bucket_view": bool(d.gradient_as_bucket_view),
            "static_graph": bool(d.static_graph),
        }
    if d.strategy == "fsdp":
        return {
            "fsdp_version": 2,                          # torch's fully_shard; FSDP1 is deprecated in torch
            "reshard_after_forward": bool(d.reshard_after_forward),
            "auto_wrap_policy": "transformer_based_wrap",
            # None: resolved from the model when accelerate prepares it (see _fsdp_plugin)
            "transformer_cls_names_to_wrap": list(d.wrap_classes) if d.wrap_classes else None,
            "state_dict_type": "SHARDED_STATE_DICT",    # checkpoints: each process writes its shard
            "cpu_offload": bool(d.cpu_offload),
            "activation_checkpointing": bool(d.activation_checkpointing),
        }
    if d.strategy == "deepspeed":
        nvme = str(d.nvme_path) if d.nvme_path else None
        return {
            "zero_stage": int(d.zero_stage),
            "offload_optimizer_device": d.offload_optimizer,
            "offload_param_device": d.offload_params,
            "offload_optimizer_nvme_path": nvme if d.offload_optimizer == "nvme" else None,
            "offload_param_nvme_path": nvme if d.offload_params == "nvme" else None,
            "gradient_accumulation_steps": 1,           # see check(): the loop's steps are DeepSpeed's steps
            # DeepSpeed clips inside its own step; 0 turns its clipping off like max_grad_norm=null.
            "gradient_clipping": float(t.max_grad_norm or 0.0),
            # Stage 3 keeps no whole copy of the weights anywhere; this lets final/ gather one.
            "zero3_save_16bit_model": int(d.zero_stage) == 3,
            "zero3_init_flag": False,                   # the model is built before DeepSpeed starts
        }
    return {}


# --------------------------------------------------------------------------- runtime
def accelerator_kwargs(cfg, cpu: bool) -> dict:
    """Plugin objects for Accelerator(**kwargs), after checking this machine can run them."""
    d = cfg.get("distributed")
    if d is None:  # a config composed without the group (programmatic use): the launcher decides
        return {}
    kwargs = plugin_kwargs(cfg)
    if d.strategy == "ddp":
        from accelerate.utils import DistributedDataParallelKwargs

        if world_size() == 1:
            log.warning("distributed=ddp with one process: nothing to distribute; launch with torchrun or accelerate launch")
        return {"kwargs_handlers": [DistributedDataParallelKwargs(**kwargs)]}
    if d.strategy == "fsdp":
        if world_size() == 1:
            # Nothing to shard; accelerate would ignore the plugin anyway. Checkpoints stay plain.
            log.warning("distributed=fsdp with one process: nothing to shard, training as a single process; launch with torchrun or accelerate launch")
            return {}
        if cpu and d.cpu_offload:
            # torch's offload policy moves state off an accelerator; on CPU it fails deep inside.
            raise UserError("distributed.cpu_offload=true: offloading moves state from the GPU to CPU memory, and this run is on the CPU already; set distributed.cpu_offload=false.")
        try:
            return {"fsdp_plugin": _fsdp_plugin(**kwargs)}
        except ImportError as exc:  # FSDP2 needs a recent torch
            raise UserError(f"distributed=fsdp: {exc}; upgrade torch or use distributed=ddp.") from None
    if d.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"distributed={_option(d)}: the deepspeed package is not installed; pip install 'llmtune[deepspeed]' (needs CUDA GPUs), or use distributed=fsdp.")
        if cpu:
            raise UserError(f"distributed={_option(d)}: DeepSpeed needs CUDA GPUs and this run is on the CPU (no GPU found, or trainer.cpu=true); use distributed=none or fsdp.")
        from accelerate.utils import DeepSpeedPlugin

        return {"deepspeed_plugin": DeepSpeedPlugin(**kwargs)}
    return {}


def _option(d) -> str:
    return f"deepspeed_zero{d.zero_stage}"


def finish_setup(accelerator, kwargs: dict, precision: str) -> None:
    """Turn FSDP on where accelerate leaves it off: multi-process CPU (gloo).

    accelerate 1.15 promotes only GPU-like multi-process types to FSDP; on a CPU-only launch it
    ignores the plugin and would silently train plain DDP. torch's FSDP2 itself runs on gloo
    (checked: fully_shard, clipping, no_sync and torch.distributed.checkpoint on 2 CPU
    processes), so llmtune sets the type itself. It is for tests and debugging; on GPUs
    accelerate does this on its own and this function does nothing."""
    plugin = kwargs.get("fsdp_plugin")
    if plugin is None:
        return
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        if precision != "no":
            plugin.set_mixed_precision(precision)
    elif state.distributed_type != DistributedType.FSDP:
        raise UserError(f"distributed=fsdp: accelerate did not enable FSDP for this launch ({state.distributed_type}); launch several processes with torchrun or accelerate launch.")


def _fsdp_plugin(**kwargs):
    """accelerate's FSDP plugin, resolving the classes to wrap from the model before accelerate
    looks them up: a wrong name is then one clear line, not a ValueError deep inside prepare().
    Defined here, not at import, so config checks do not import accelerate and torch."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    class Plugin(FullyShardedDataParallelPlugin):
        def set_auto_wrap_policy(self, model):
            if not getattr(self, "_llmtune_resolved", False):  # accelerate calls this twice
                self.transformer_cls_names_to_wrap = resolve_wrap_classes(model, self.transformer_cls_names_to_wrap)
                check_shared_parameters(model, self.transformer_cls_names_to_wrap)
                self._llmtune_resolved = True
                log.info("fsdp: one unit per %s (the embeddings, the output head and the rest get their own)", ", ".join(self.transformer_cls_names_to_wrap) or "(none)")
            return super().set_auto_wrap_policy(model)

    return Plugin(**kwargs)


def transformer_blocks(model) -> list[str]:
    """The class names to give one FSDP unit each: the model's `_no_split_modules` when it names
    them, else the class of its repeated block (the longest ModuleList of one class)."""
    import torch

    names = list(getattr(model, "_no_split_modules", None) or [])
    if names:
        return names
    best: list = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len({type(m) for m in module}) == 1 and len(module) > len(best):
            best = list(module)
    return [type(best[0]).__name__] if best else []


def resolve_wrap_classes(model, configured: list[str] | None) -> list[str]:
    """The FSDP unit classes for `model`; a configured name the model lacks is a UserError.

    accelerate gives the input embeddings their own unit; a class that contains them (BERT's
    BertEmbeddings is in its _no_split_modules) cannot be a unit too - fully_shard then fails
    on the already-sharded embedding weight (seen with torch 2.13, accelerate 1.15)."""
    from llmtune.errors import did_you_mean

    present = {type(m).__name__ for m in model.modules()}
    holders = _embedding_holders(model)
    if configured:
        missing = [c for c in configured if c not in present]
        if missing:
            found = ", ".join(transformer_blocks(model)) or "none found"
            raise UserError(
                f"distributed.wrap_classes: {type(model).__name__} has no module class {missing[0]!r}."
                f"{did_you_mean(missing[0], sorted(present))} Its transformer blocks: {found}."
            )
        clash = [c for c in configured if c in holders]
        if clash:
            raise UserError(f"distributed.wrap_classes: {clash[0]} holds the input embeddings, which FSDP already shards on their own; leave it out of the list.")
        return list(configured)
    names = [n for n in transformer_blocks(model) if n in present and n not in holders]
    if not names:
        log.warning("distributed=fsdp: found no transformer block class in %s; the whole model is one FSDP unit (set distributed.wrap_classes=[...] to shard per block)", type(model).__name__)
    return names


def clean_name(name: str) -> str:
    """A parameter name as state dicts spell it: without the wrappers FSDP, activation
    checkpointing and torch.compile put in module paths."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def shared_names(model) -> list[list[str]]:
    """The names of each parameter registered under more than one name (tied weights)."""
    names_by_param: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_by_param.setdefault(id(param), []).append(clean_name(name))
    return [names for names in names_by_param.values() if len(names) > 1]


def check_shared_parameters(model, wrap_classes: list[str]) -> None:
    """Refuse a model whose shared (tied) parameter would land in two FSDP units: torch
    refuses that at the first forward, with a message about fully_shard. accelerate groups the
    tied input/output embeddings itself; other ties are grouped by the module that registers
    each name. BERT's masked-LM head is one: cls.predictions.bias is also the decoder's bias."""
    embedding = _call(model, "get_input_embeddings")
    embedding_names = {clean_name(n) + ".weight" for n, m in model.named_modules(remove_duplicate=False) if embedding is not None and m is embedding}
    for names in shared_names(model):
        if embedding_names.isdisjoint(names) and len({_fsdp_unit(model, n, wrap_classes) for n in names}) > 1:
            raise UserError(
                f"distributed=fsdp: {type(model).__name__} shares one parameter between {names[0]} and {names[1]}, which "
                "FSDP (accelerate 1.15) would put in two units; train this model with distributed=ddp or none."
            )


def _fsdp_unit(model, name: str, wrap_classes: list[str]) -> str:
    """The FSDP unit accelerate puts parameter `name` in: the innermost enclosing module that is
    a wrapped block or the input/output embeddings, else the root ("")."""
    special = {id(m) for m in (_call(model, "get_input_embeddings"), _call(model, "get_output_embeddings")) if m is not None}
    unit, path, module = "", [], model
    for part in name.split(".")[:-1]:
        module = getattr(module, part)
        path.append(part)
        if type(module).__name__ in wrap_classes or id(module) in special:
            unit = ".".join(path)
    return unit


def _call(model, method: str):
    fn = getattr(model, method, None)
    try:
        return fn() if callable(fn) else None
    except (NotImplementedError, AttributeError):
        return None


def _embedding_holders(model) -> set[str]:
    """Classes of the modules (other than the model) that contain its input embedding layer."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None:
        return set()
    return {type(m).__name__ for m in model.modules() if m is not model and m is not embedding and any(sub is embedding for sub in m.modules())}


# --------------------------------------------------------------------------- final/
def is_sharded(model) -> bool:
    """True for a model wrapped by FSDP (torch's fully_shard, or the FSDP1 wrapper)."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def full_weights(model, accelerator) -> dict | None:
    """The whole model's state dict on the main process when its weights are split across
    processes (FSDP, DeepSpeed ZeRO-3), for save_pretrained(state_dict=...); None when the
    model holds its own weights. Every process must call it: the gather is collective."""
    from accelerate.utils import DistributedType

    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Gathered shard by shard into CPU memory of rank 0 only (accelerate's get_state_dict
        # returned DTensors here, which safetensors cannot write).
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Tied names (lm_head.weight = embed_tokens.weight) came back as separate copies; one
        # shared tensor again lets save_pretrained drop the duplicate as it does unsharded.
        for names in shared_names(model):
            present = [n for n in names if n in weights]
            for name in present[1:]:
                weights[name] = weights[present[0]]
        return weights
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        return accelerator.get_state_dict(accelerator.deepspeed_engine_wrapped.engine)
    return None
