"""The section registry.

A section is a module under ``benchmarks/`` that defines one function decorated with
:func:`section`::

    from .common import Context, Row
    from .sections import section

    @section("study", "Studies: trials/hour, ...")
    def run(ctx: Context) -> list[Row]:
        ...
        return rows

and is listed in :data:`SECTION_MODULES` (the one registration point). The runner
imports the listed modules, selects sections with ``--only``, calls them in this order,
computes the ratios per ``(section, group)`` and prints/writes everything.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from .common import Context, Row

# Registration point: add "benchmarks.study" here when the study section exists.
SECTION_MODULES = ("benchmarks.train_step", "benchmarks.evaluation", "benchmarks.ttq", "benchmarks.study")


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    run: Callable[[Context], list[Row]]
    default: bool  # part of a plain run (without --only)


_REGISTRY: dict[str, Section] = {}


def section(name: str, title: str, default: bool = True) -> Callable[[Callable[[Context], list[Row]]], Callable[[Context], list[Row]]]:
    def deco(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        _REGISTRY[name] = Section(name, title, fn, default)
        return fn
    return deco


def registry() -> dict[str, Section]:
    for mod in SECTION_MODULES:
        importlib.import_module(mod)
    return dict(_REGISTRY)
