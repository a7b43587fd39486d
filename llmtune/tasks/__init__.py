"""Tasks: one module per task; everything task-specific lives in its module (see base.Task)."""
