"""genft: fine-tune causal LMs and measure how what they learned generalizes.

Notebook API (see docs/api.md): ``genft.run``, ``genft.train``, ``genft.evaluate``,
``genft.evaluate_tasks``, ``genft.load_results``, ``genft.load_items``, ``genft.write_report``. They are imported on first use, so that
``import genft`` stays fast.
"""

from genft._version import __version__

_API = ("run", "train", "evaluate", "evaluate_tasks", "load_results", "load_items", "write_report")
__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        from genft import api

        return getattr(api, name)
    raise AttributeError(f"module 'genft' has no attribute {name!r}")
