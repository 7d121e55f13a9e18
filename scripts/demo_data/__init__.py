"""Hand-written Korean medical fact tables and generators for the medkor demo data.

Everything here is original sample text written for the demo; nothing is copied from
a real exam or data set. Generation is stdlib-only and deterministic.
"""

from __future__ import annotations

import importlib
import pkgutil


def all_facts() -> list[dict]:
    """Every fact entry from the ``facts_*`` modules, in module-name order."""
    entries: list[dict] = []
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("facts_"))
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        entries.extend(module.FACTS)
    seen = set()
    for e in entries:
        if e["n"] in seen:
            raise ValueError(f"duplicate fact entry {e['n']!r}")
        seen.add(e["n"])
    return entries
