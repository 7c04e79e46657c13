"""The generalization grid: config -> plan (jobs + cells, keyed by hash) -> runner -> store.

Modules: config (the YAML schema), plan (expansion and keys), store (SQLite),
runner (`genft run`), results (the tidy table), cli. The notebook API is genft.api.
"""
