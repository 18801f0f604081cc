"""Prefect flows composing the tasks: the benchmark and the dataset watcher."""
