"""llmtune: Hydra-configured transformer pretraining and fine-tuning on HF Accelerate."""

__version__ = "0.1.0"
