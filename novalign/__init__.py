"""novalign: the Baichuan Alignment recipe, end to end."""

__version__ = "0.1.0"
