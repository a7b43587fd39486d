"""Data loading: built-in sample sets and readers for user files."""
