"""Prefix tuning (Li & Liang, 2021) through the peft library: trained key/value prefixes in every
attention layer, produced during training by a reparameterisation MLP (prefix_projection).
Causal LMs only (task=sft, clm): peft feeds the prefix as past key values, which it passes to
a causal LM as they are; for other task types it requires a forward taking `past_key_values`,
and with transformers 5 (where that argument is `cache`) no encoder or classifier has one.
Shared behaviour: llmtune.peft.prompt_learning."""

from __future__ import annotations

from llmtune.errors import UserError
from llmtune.peft.prompt_learning import PromptLearning


class PrefixTuning(PromptLearning):
    method = "prefix"
    default_lr = 1e-2  # peft's prefix-tuning examples
    extends_input = False  # a KV-cache prefix: the logits are the real positions already

    def __init__(self, num_virtual_tokens: int = 20, encoder_hidden_size: int = 512, prefix_projection: bool = True) -> None:
        super().__init__(num_virtual_tokens)
        self.encoder_hidden_size, self.prefix_projection = encoder_hidden_size, prefix_projection

    def preflight(self, cfg) -> None:
        from llmtune.builders import build_task

        task = build_task(cfg)
        if task.peft_task_type != "CAUSAL_LM":
            raise UserError(
                f"peft=prefix works on causal LMs only (task=sft or clm with a decoder): peft feeds the prefix as past key values, which "
                f"the {task.auto_class} models of task={task.name} do not take; use peft=prompt_tuning or peft=p_tuning."
            )
        super().preflight(cfg)

    def fit(self, model):
        """As for every prompt-learning method, and: when peft passes the prefix (as
        past_key_values), the base gets no cache of transformers' own, which it would use
        instead (generation creates one; the prefix would be dropped after the first token)."""

        def prefix_only(module, args, kwargs):
            if kwargs.get("past_key_values") is not None:
                kwargs.pop("cache", None)
            return args, kwargs

        model.get_base_model().register_forward_pre_hook(prefix_only, with_kwargs=True)
        return super().fit(model)

    def peft_config(self, model, task, heads: list[str]):
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type=task.peft_task_type, num_virtual_tokens=self.num_virtual_tokens, prefix_projection=self.prefix_projection,
            encoder_hidden_size=self.encoder_hidden_size, modules_to_save=heads or None,
        )
