"""Every private Ray, Typer or Rich name the package leans on (mnist_ray/internals.py) is
still there: an upgrade that removes one fails here, by name, before it fails a user.

    PYTHONPATH=. python -m pytest tests/test_internals.py -q
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from mnist_ray.internals import PRIVATE

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_ray"


@pytest.mark.parametrize(("module", "path", "where", "why"), PRIVATE, ids=lambda v: str(v)[:60])
def test_a_private_name_we_use_is_still_there(module, path, where, why):
    found = importlib.import_module(module)
    for part in path.split("."):
        assert hasattr(found, part), f"{module}.{path} is gone (used in {where}: {why})"
        found = getattr(found, part)


def test_every_private_ray_module_the_package_imports_is_listed():
    listed = {module for module, *_ in PRIVATE}
    used = set()
    for source in PACKAGE.glob("*.py"):
        used |= set(re.findall(r"\b(ray\._(?:private|raylet)[\w.]*)", source.read_text()))
    # `from ray._private import ray_constants` names a parent of a listed module: fine
    unlisted = {
        u
        for u in used
        if not any(u == m or u.startswith(m + ".") or m.startswith(u + ".") for m in listed)
    }
    assert not unlisted, f"list these in mnist_ray/internals.py: {sorted(unlisted)}"
