"""Prefect tasks: thin wrappers that add names, retries and Dask resources to library calls."""
