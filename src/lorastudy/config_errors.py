"""A profile's validation errors as a reader needs them: the dotted key, the line of the YAML file where it is
written, what is wrong and what was given (pydantic validates; this only formats)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def format_errors(err: ValidationError, source: str, overridden: tuple[str, ...] = ()) -> str:
    """One line per problem: the dotted key, the file's line where it is written (where this file has it and no
    override replaced it), what is wrong and what was given."""
    lines = [f"invalid profile {source}:"]
    try:
        tree = yaml.compose(Path(source).read_text(encoding="utf-8"))  # once, for every error's line
    except (OSError, yaml.YAMLError):
        tree = None
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        replaced = any(loc == key or loc.startswith(key + ".") for key in overridden)
        line = None if replaced else _line_of(tree, e["loc"])
        at = f" (line {line})" if line else ""
        lines.append(f"  {loc}{at}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line of the composed profile `node` that writes the deepest key of `loc` it has (None when none)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
