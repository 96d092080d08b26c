"""Experiment configs (``get_config(arg)`` each); ``configs.common`` holds the shared blocks."""
