"""genft: fine-tune causal LMs and measure how what they learned generalizes."""

__version__ = "0.1.0"
