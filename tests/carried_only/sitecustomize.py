"""Test aid (on PYTHONPATH, Python runs it at start): jsonargparse, docstring_parser and typeshed_client import
only from a path entry under $CARRIED_ONLY, as on the GPU machine, which lacks them unless they are carried."""

import importlib.machinery
import os
import sys

BLOCKED = {"jsonargparse", "docstring_parser", "typeshed_client"}


class CarriedOnly:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] not in BLOCKED or path is not None:
            return None
        carried = [p for p in sys.path if p.startswith(os.environ["CARRIED_ONLY"])]
        spec = importlib.machinery.PathFinder.find_spec(name, carried)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} outside {os.environ['CARRIED_ONLY']}", name=name)
        return spec


if os.environ.get("CARRIED_ONLY"):
    sys.meta_path.insert(0, CarriedOnly)
