"""genft's version, in a module of its own: lower layers import it from here rather than
from the top package (whose ``__init__`` is the notebook API)."""

__version__ = "0.1.0"
