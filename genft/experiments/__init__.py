"""The generalization grid: config -> plan (jobs + cells, keyed by hash) -> runner -> store.

Modules: config (the YAML schema; `genft eval`'s EvalConfig), plan (expansion and keys;
`genft eval`'s one-model plan), store (SQLite), runner (`genft run` and `genft eval`),
results (the tidy and per-item tables), cli. The notebook API is genft.api.
"""
