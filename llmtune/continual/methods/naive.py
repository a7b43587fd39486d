"""Sequential fine-tuning: each stage starts from the previous stage's weights and trains on
its own data alone. The baseline every other method is measured against."""

from __future__ import annotations

from llmtune.continual.methods.base import Method


class Naive(Method):
    method = "naive"
