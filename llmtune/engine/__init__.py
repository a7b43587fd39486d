"""The training engine: a step-based loop on HF Accelerate (loop.py), checkpoints, callbacks."""
