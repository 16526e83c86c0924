"""Plain data: the only values that cross between a sandboxed program and the trusted evaluator.

A sandboxed candidate's return values come back as JSON of exact built-in types (None, bool, int, float, str,
bytes, complex, list, tuple, dict, set, frozenset; the standard library's Counter and OrderedDict), so that
the trusted side compares values whose equality nobody can redefine: an object with a forged `__eq__`, a
subclass of str, a generator are not plain and fail.
Lists are JSON arrays; every other container or special value is a one-key object naming its type.

This file must stay free of module-level imports beyond the standard library's `collections` and `math`: the
sandbox bootstrap runs it, as source, inside the sandbox's bare interpreter (lorastudy.evaluation.sandbox), where
importing `json` (and with it `re` and `enum`) would cost each run about 13 ms of its 50. So `to_json` writes
the JSON text itself; only the trusted side parses it, with `json`.
"""
import collections
import math

MAX_DEPTH = 64  # nesting: deeper is not plain (and would cost the trusted side its recursion budget)
MAX_ITEMS = 200_000  # elements in one value, all levels together


class Unplain(ValueError):
    """A value (or a payload) that is not plain data; the message names what was found."""


def encode(value, _depth=0, _budget=None):
    """`value` as JSON-able data, or Unplain."""
    budget = [MAX_ITEMS] if _budget is None else _budget
    budget[0] -= 1
    if budget[0] < 0:
        raise Unplain(f"more than {MAX_ITEMS} elements")
    if _depth > MAX_DEPTH:
        raise Unplain(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind is str and not value.isascii() and _has_surrogates(value):
        return {"str": value.encode("utf-32-le", "surrogatepass").hex()}  # JSON would join a pair into one char
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is complex:
        return {"complex": [encode(value.real), encode(value.imag)]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is list:
        return [encode(v, _depth + 1, budget) for v in value]
    if kind is tuple or kind is set or kind is frozenset:
        return {kind.__name__: [encode(v, _depth + 1, budget) for v in value]}
    if kind is dict or kind is collections.Counter or kind is collections.OrderedDict:
        pairs = [[encode(k, _depth + 1, budget), encode(v, _depth + 1, budget)] for k, v in value.items()]
        return {"dict" if kind is dict else kind.__name__: pairs}
    raise Unplain(f"a value of type {kind.__name__!r}")


def _has_surrogates(text):
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


_SPECIAL = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAPPINGS = {"dict": dict, "Counter": collections.Counter, "OrderedDict": collections.OrderedDict}


def decode(data, _depth=0):
    """Python values from `encode`'s output; Unplain for anything `encode` cannot have written."""
    if _depth > MAX_DEPTH:
        raise Unplain(f"nested deeper than {MAX_DEPTH}")
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is str or kind is float:
        return data
    if kind is list:
        return [decode(v, _depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise Unplain(f"malformed plain data ({kind.__name__})")
    (tag, body), = data.items()
    try:
        if tag == "float" and body in _SPECIAL:
            return _SPECIAL[body]
        if tag == "complex" and type(body) is list and len(body) == 2:
            return complex(*(decode(v, _depth + 1) for v in body))
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "str" and type(body) is str:
            return bytes.fromhex(body).decode("utf-32-le", "surrogatepass")
        if tag in ("tuple", "set", "frozenset") and type(body) is list:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v, _depth + 1) for v in body)
        if tag in _MAPPINGS and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
            pairs = {decode(k, _depth + 1): decode(v, _depth + 1) for k, v in body}
            return pairs if tag == "dict" else _MAPPINGS[tag](pairs)
    except (TypeError, ValueError) as err:  # an unhashable key or set element, bad hex, a bad complex part
        raise Unplain(f"malformed {tag}: {err}") from None
    raise Unplain(f"malformed plain data (tag {tag!r})")


# JSON's string escapes: the quote, the backslash, control characters, and lone surrogates (which UTF-8 cannot
# carry); every other character travels as itself in the UTF-8 text.
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", **{c: "\\u%04x" % c for c in [*range(0x20), *range(0xD800, 0xE000)]}}


def to_json(data):
    """`encode`'s output as compact JSON text, the same value `json.loads` reads back as json.dumps would write
    it (written by hand: see the module's docstring). Only the types `encode` returns are accepted."""
    kind = type(data)
    if data is None:
        return "null"
    if kind is bool:
        return "true" if data else "false"
    if kind is int:
        return int.__repr__(data)
    if kind is float:
        return float.__repr__(data)  # finite: encode tags the others
    if kind is str:
        return '"' + data.translate(_ESCAPES) + '"'
    if kind is list:
        return "[" + ",".join(map(to_json, data)) + "]"
    if kind is dict and all(type(k) is str for k in data):
        return "{" + ",".join(to_json(k) + ":" + to_json(v) for k, v in data.items()) + "}"
    raise Unplain(f"not encoded plain data ({kind.__name__})")


def dumps(value):
    """`value` as one line of JSON text (Unplain if it is not plain)."""
    return to_json(encode(value))


def loads(text):
    """The value of `dumps(value)`; Unplain for any text `dumps` cannot have written (never another error)."""
    import json  # here, not at the top: the sandbox's copy of this file never parses JSON (module docstring)

    try:
        return decode(json.loads(text))
    except Unplain:
        raise
    except (ValueError, RecursionError, MemoryError, TypeError) as err:
        raise Unplain(f"not plain-data JSON: {type(err).__name__}") from None
