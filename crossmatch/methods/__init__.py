"""Methods by name. ``get_method("crossmatch")`` is the torch-free
declaration (``catalog.MethodInfo``: hyperparameters, defaults, checks);
``get_method(name).load()`` imports and returns its implementation (a
``base.Method`` subclass). A new method is its implementation file plus its
entry in ``catalog.py``."""
from .catalog import METHODS, MethodInfo, get_method

__all__ = ["METHODS", "MethodInfo", "get_method"]
