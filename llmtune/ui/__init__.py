"""Terminal output: logging, the progress bar and result tables (rich)."""
