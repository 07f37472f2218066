"""Methods by name: ``get_method("crossmatch")``. Importing registers them."""
from .base import METHODS, Method, StepContext, get_method
from . import crossmatch, supervised  # noqa: F401  (registration)

__all__ = ["METHODS", "Method", "StepContext", "get_method"]
