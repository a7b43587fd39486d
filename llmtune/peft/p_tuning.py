"""P-tuning (Liu et al., 2021) through the peft library: virtual tokens produced by a small
prompt encoder (an MLP or an LSTM) in front of every input; the task head trains too. Shared
behaviour (alignment of the logits, refusals, save/load): llmtune.peft.prompt_learning."""

from __future__ import annotations

from llmtune.errors import UserError
from llmtune.peft.prompt_learning import PromptLearning

ENCODERS = {"mlp": "MLP", "lstm": "LSTM"}


class PTuning(PromptLearning):
    method = "p_tuning"
    default_lr = 1e-3  # the prompt encoder is a small network; peft's P-tuning examples use 1e-3

    def __init__(self, num_virtual_tokens: int = 20, encoder: str = "mlp", encoder_hidden_size: int = 128,
                 encoder_num_layers: int = 2, encoder_dropout: float = 0.0) -> None:
        super().__init__(num_virtual_tokens)
        if str(encoder).lower() not in ENCODERS:
            raise UserError(f"peft.encoder={encoder}: not a prompt encoder; use one of {', '.join(ENCODERS)}.")
        self.encoder = str(encoder).lower()
        self.encoder_hidden_size, self.encoder_num_layers, self.encoder_dropout = encoder_hidden_size, encoder_num_layers, encoder_dropout

    def peft_config(self, model, task, heads: list[str]):
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            task_type=task.peft_task_type, num_virtual_tokens=self.num_virtual_tokens, encoder_reparameterization_type=ENCODERS[self.encoder],
            encoder_hidden_size=self.encoder_hidden_size, encoder_num_layers=self.encoder_num_layers,
            encoder_dropout=self.encoder_dropout, modules_to_save=heads or None,
        )
