"""rowprompt: one prompt, every row, the cheapest way that still meets your deadline."""

__version__ = "0.1.0"
