"""Continual-learning methods: one module and one YAML (conf/continual/<name>.yaml) each.

Every method derives from `base.Method`; the runner builds the one `continual=<name>` selects
(`build_method`) and calls its hooks for each stage.
"""
