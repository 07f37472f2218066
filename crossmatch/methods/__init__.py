"""Methods by name: ``get_method("crossmatch")``. Every module of this
package is imported here, so a new method is one new file with a
``@register``-ed class."""
import importlib
import pkgutil

from .base import METHODS, Method, StepContext, get_method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "Method", "StepContext", "get_method"]
