"""Griffe extension: a Google-style ``Example:`` section is read like ``Examples:``.

Google style allows both headings (Sphinx's Napoleon reads both); Griffe knows only the
plural, and would render an ``Example:`` section as a note with its doctest as prose.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
