"""Schema sampling: a JSON value that fits a cord's input schema, and a one-line schema check.

The payload of a synthetic call to a non-LLM cord is ``sample(cord.input_schema, rng)``; the
reply is judged with ``check(output, cord.output_schema)``. Nothing here does I/O; the
randomness is the caller's ``random.Random``, so one seed gives one value.

It covers the JSON Schema pydantic v2 emits: ``$defs``/``$ref`` (recursive ones too: past a
few hops optional parts are left out so the value ends), ``anyOf``/``oneOf``, ``allOf`` of
simple objects, ``enum``, ``const``, ``default``/``examples``, every ``type`` with its bounds,
and the common ``format``s. Values are random within bounds; a ``pattern`` is only met
through an ``examples``/``default`` value. Every value is checked with ``jsonschema`` before
it is returned; when none can be built, ``Unsamplable`` names the schema path.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import random
import uuid
from typing import Any, Callable
from urllib.parse import unquote

from jsonschema import exceptions as js_errors
from jsonschema.validators import Draft202012Validator, validator_for

MAX_REF_DEPTH = 12  # $ref hops along one path before giving up (a recursion with no way out)
SHALLOW_DEPTH = 4  # past this many hops: no optional properties, minimal arrays, non-$ref branches first
MAX_SIZE = 10_000  # a minLength / minItems above this is refused (no payload that big is useful)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_IMPLIED = (("object", {"properties", "required", "additionalProperties", "minProperties", "propertyNames"}),
            ("array", {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"}),
            ("number", {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}))


class Unsamplable(ValueError):
    """No valid value can be built for the schema; ``path`` is where (a JSON pointer into it)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def sample(schema: dict, rng: random.Random) -> Any:
    """A value that validates against ``schema``; raises ``Unsamplable`` when none can be built."""
    if not isinstance(schema, (dict, bool)):
        raise Unsamplable("#", f"a schema is a JSON object, not {type(schema).__name__}")
    try:
        _compiled(_key(schema))
    except js_errors.SchemaError as error:
        raise Unsamplable("#", f"invalid schema: {_one_line(error.message)}") from None
    problem = ""
    for _ in range(3):  # ``not``, ``uniqueItems`` or a stray keyword may reject one draw; try again
        value = _Sampler(schema, rng).value(schema, "#", 0)
        problem = check(value, schema) or ""
        if not problem:
            return value
    raise Unsamplable("#", f"the sampled value does not validate ({problem})")


def check(instance: Any, schema: dict) -> str | None:
    """None when ``instance`` validates against ``schema``, else one line naming the failing path."""
    try:
        validator = _compiled(_key(schema))
    except js_errors.SchemaError as invalid:
        return f"#: the schema itself is invalid: {_one_line(invalid.message)}"
    error = js_errors.best_match(validator.iter_errors(instance))
    return None if error is None else _one_line(f"{error.json_path}: {error.message}")


def _key(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _compiled(key: str) -> Any:
    schema = json.loads(key)
    cls = validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _word(rng: random.Random, low: int = 3, high: int = 10) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(low, high)))


def _datetime(rng: random.Random) -> str:
    return (f"{rng.randint(2000, 2030):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z")


FORMATS: dict[str, Callable[[random.Random], str]] = {
    "date-time": _datetime,
    "date": lambda rng: _datetime(rng)[:10],
    "time": lambda rng: _datetime(rng)[11:],
    "duration": lambda rng: f"PT{rng.randint(1, 3600)}S",
    "email": lambda rng: f"{_word(rng)}@example.com",
    "uri": lambda rng: f"https://example.com/{_word(rng)}",
    "uuid": lambda rng: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "ipv4": lambda rng: f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
    "ipv6": lambda rng: f"fd00::{rng.randint(1, 0xFFFF):x}",
    "hostname": lambda rng: f"{_word(rng)}.example.com",
}


def _multiple_ok(value: float, multiple: float) -> bool:
    """jsonschema's own multipleOf test (float division, so 0.3 is not a multiple of 0.1)."""
    if isinstance(multiple, float):
        quotient = value / multiple
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % multiple == 0


def _merge(base: dict, part: dict, path: str) -> dict:
    """``base`` and ``part`` as one schema, for ``allOf`` of simple objects."""
    merged = dict(base)
    for key, value in part.items():
        if key not in merged:
            merged[key] = value
        elif key == "properties":
            props = dict(merged[key])
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props and props[name] != sub else sub
            merged[key] = props
        elif key == "required":
            merged[key] = list(dict.fromkeys([*merged[key], *value]))
        elif key in _LOWER:
            merged[key] = max(merged[key], value)
        elif key in _UPPER:
            merged[key] = min(merged[key], value)
        elif key == "type":
            ours = {merged[key]} if isinstance(merged[key], str) else set(merged[key])
            both = [t for t in ([value] if isinstance(value, str) else value) if t in ours]
            if not both:
                raise Unsamplable(path, f"allOf types {merged[key]!r} and {value!r} do not meet")
            merged[key] = both[0] if len(both) == 1 else both
        elif key == "enum":
            merged[key] = [v for v in merged[key] if v in value]
    return merged


class _Sampler:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root, self.rng = root, rng

    # --- dispatch ----------------------------------------------------------------------------

    def value(self, schema: Any, path: str, depth: int) -> Any:
        if schema is True or schema == {}:
            return _word(self.rng)
        if schema is False:
            raise Unsamplable(path, "the schema is false: no value validates")
        if not isinstance(schema, dict):
            raise Unsamplable(path, f"a schema is a JSON object, not {type(schema).__name__}")
        if "$ref" in schema:
            schema, path, depth = self._deref(schema, path, depth)
        if "allOf" in schema:
            schema = self._all_of(schema, path, depth)
        if "const" in schema:
            return copy.deepcopy(schema["const"])
        if "enum" in schema:
            if not schema["enum"]:
                raise Unsamplable(path, "empty enum")
            return copy.deepcopy(self.rng.choice(schema["enum"]))
        candidates = self._candidates(schema)
        if "pattern" in schema:
            if not candidates:
                raise Unsamplable(path, f"pattern {schema['pattern']!r} has no example or default to use")
            return self.rng.choice(candidates)
        if candidates and self.rng.random() < 0.25:
            return self.rng.choice(candidates)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._branch(schema, key, path, depth)
        kind = self._type(schema, depth)
        if kind in ("null", "boolean"):
            return None if kind == "null" else self.rng.random() < 0.5
        if kind not in ("integer", "number", "string", "array", "object"):
            raise Unsamplable(path, f"unknown type {kind!r}")
        return getattr(self, f"_{kind}")(schema, path, depth)

    def _deref(self, schema: dict, path: str, depth: int) -> tuple[dict, str, int]:
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if depth >= MAX_REF_DEPTH:
                raise Unsamplable(path, f"$ref recursion deeper than {MAX_REF_DEPTH} ({ref})")
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise Unsamplable(path, f"only local $refs are followed, not {ref!r}")
            target: Any = self.root
            for token in filter(None, unquote(ref[1:]).split("/")):
                target = target.get(token.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            if not isinstance(target, dict):
                raise Unsamplable(path, f"$ref {ref!r} points nowhere (or to no schema object)")
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema, path, depth = ({**target, **siblings} if siblings else target), ref, depth + 1
        return schema, path, depth

    def _all_of(self, schema: dict, path: str, depth: int) -> dict:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for index, part in enumerate(schema["allOf"]):
            part, _, _ = self._deref(part, f"{path}/allOf/{index}", depth) if isinstance(part, dict) else (part, 0, 0)
            if part is True:
                continue
            if not isinstance(part, dict):
                raise Unsamplable(f"{path}/allOf/{index}", "the schema is false: no value validates")
            if "allOf" in part:
                part = self._all_of(part, f"{path}/allOf/{index}", depth)
            merged = _merge(merged, part, f"{path}/allOf/{index}")
        return merged

    def _candidates(self, schema: dict) -> list[Any]:
        """``examples``, ``example`` and ``default`` values that validate against ``schema``."""
        values = list(schema["examples"]) if isinstance(schema.get("examples"), list) else []
        values += [schema[key] for key in ("example", "default") if key in schema]
        if not values:
            return []
        return [copy.deepcopy(v) for v in values if check(v, {**self._defs(), **schema}) is None]

    def _branch(self, schema: dict, key: str, path: str, depth: int) -> Any:
        branches = list(enumerate(schema[key]))
        self.rng.shuffle(branches)
        if depth >= SHALLOW_DEPTH:  # end recursion: null and $ref-free branches first
            branches.sort(key=lambda item: (item[1] != {"type": "null"}, "$ref" in json.dumps(item[1])))
        failures: list[Unsamplable] = []
        for index, branch in branches:
            try:
                value = self.value(branch, f"{path}/{key}/{index}", depth)
            except Unsamplable as error:
                failures.append(error)
                continue
            if key == "oneOf" and check(value, {**self._defs(), "oneOf": schema[key]}) is not None:
                continue  # it matched more than one branch
            return value
        raise failures[0] if failures else Unsamplable(path, f"no {key} branch gives a value that fits only it")

    def _defs(self) -> dict:
        return {k: self.root[k] for k in ("$defs", "definitions") if isinstance(self.root, dict) and k in self.root}

    def _type(self, schema: dict, depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list) and kind:
            if depth >= SHALLOW_DEPTH and "null" in kind:
                return "null"
            return self.rng.choice(kind)
        if isinstance(kind, str):
            return kind
        return next((kind for kind, keys in _IMPLIED if not keys.isdisjoint(schema)), "string")

    # --- the types ---------------------------------------------------------------------------

    def _number(self, schema: dict, path: str, depth: int, integer: bool = False) -> float:
        lo, lo_open, hi, hi_open = -math.inf, False, math.inf, False
        for key, lower, open_ in (("minimum", 1, 0), ("exclusiveMinimum", 1, 1), ("maximum", 0, 0),
                                  ("exclusiveMaximum", 0, 1)):
            value = schema.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if lower and (value > lo or value == lo and open_):
                lo, lo_open = value, bool(open_)
            elif not lower and (value < hi or value == hi and open_):
                hi, hi_open = value, bool(open_)
        if integer and lo > -math.inf:
            lo, lo_open = (math.floor(lo) + 1 if lo_open else math.ceil(lo)), False
        if integer and hi < math.inf:
            hi, hi_open = (math.ceil(hi) - 1 if hi_open else math.floor(hi)), False
        lo = lo if lo > -math.inf else (0 if hi == math.inf else hi - 100)
        hi = hi if hi < math.inf else lo + 100

        def fits(value: float) -> bool:
            return ((lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
                    and (not multiple or _multiple_ok(value, multiple)))

        multiple = schema.get("multipleOf")
        if multiple:  # random multiples, then the lowest ones in order
            first, last = math.ceil(lo / multiple), math.floor(hi / multiple)
            ks = [self.rng.randint(first, last) for _ in range(16)] + list(range(first, min(last, first + 64) + 1)) \
                if first <= last else []
            values = [k * multiple for k in ks]
        elif integer:
            values = [self.rng.randint(int(lo), int(hi))] if lo <= hi else []
        else:
            values = [round(self.rng.uniform(lo, hi), 3) for _ in range(8)] + [(lo + hi) / 2]
        for value in values:
            if integer and float(value).is_integer():
                value = int(value)
            if (not integer or isinstance(value, int)) and fits(value):
                return value
        raise Unsamplable(path, "no value fits the numeric bounds" + (f" and multipleOf {multiple}" if multiple else ""))

    def _integer(self, schema: dict, path: str, depth: int) -> int:
        return int(self._number(schema, path, depth, integer=True))

    def _string(self, schema: dict, path: str, depth: int) -> str:
        low, high, fmt = schema.get("minLength", 0), schema.get("maxLength"), schema.get("format")
        if low > MAX_SIZE:
            raise Unsamplable(path, f"minLength {low} is more than {MAX_SIZE}")
        if fmt in FORMATS:
            value = FORMATS[fmt](self.rng)
            if low <= len(value) <= (high if high is not None else math.inf):
                return value
            raise Unsamplable(path, f"a {fmt} value cannot have length in [{low}, {high}]")
        top = low + 12 if high is None else min(high, low + 12)
        if top < low:
            raise Unsamplable(path, f"minLength {low} > maxLength {high}")
        length = self.rng.randint(min(max(low, 1), top), top)
        return "".join(self.rng.choice(_LETTERS) for _ in range(length))

    def _array(self, schema: dict, path: str, depth: int) -> list[Any]:
        prefix, rest = schema.get("prefixItems") or [], schema.get("items", True)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if low > MAX_SIZE:
            raise Unsamplable(path, f"minItems {low} is more than {MAX_SIZE}")
        top = low + 3 if high is None else min(high, low + 3)
        if rest is False:
            top = min(top, len(prefix))
        if top < low:
            raise Unsamplable(path, f"no array length fits minItems {low}, maxItems {high} and the items")
        count = low if depth >= SHALLOW_DEPTH else self.rng.randint(low, top)
        items: list[Any] = []
        seen: set[str] = set()
        for index in range(count):
            sub, where = (prefix[index], f"{path}/prefixItems/{index}") if index < len(prefix) else (rest, f"{path}/items")
            for _ in range(12):
                value = self.value(sub, where, depth)
                if not schema.get("uniqueItems") or _key(value) not in seen:
                    break
            else:
                raise Unsamplable(where, f"cannot draw {count} distinct items")
            seen.add(_key(value))
            items.append(value)
        return items

    def _object(self, schema: dict, path: str, depth: int) -> dict[str, Any]:
        props: dict = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name in schema.get("required") or []:
            sub = props.get(name, extra if isinstance(extra, dict) else True)
            out[name] = self.value(sub, f"{path}/properties/{name}", depth)
        low = schema.get("minProperties", 0)
        for name in [name for name in props if name not in out]:
            if len(out) < low or (depth < SHALLOW_DEPTH and self.rng.random() < 0.5):
                with contextlib.suppress(Unsamplable):  # optional: left out when it cannot be built
                    out[name] = self.value(props[name], f"{path}/properties/{name}", depth)
        if extra is False or schema.get("patternProperties"):
            return out  # (a minProperties left unmet is caught by the final check)
        mapping = "properties" not in schema and depth < SHALLOW_DEPTH  # dict[str, X]: a few entries
        wanted = max(low - len(out), self.rng.randint(0, 2) if mapping else 0)
        names = schema.get("propertyNames", {"type": "string", "minLength": 3, "maxLength": 10})
        for _ in range(wanted * 8):
            key = self.value(names, f"{path}/propertyNames", depth) if wanted > 0 else None
            if isinstance(key, str) and key not in out:
                out[key] = self.value(extra if isinstance(extra, dict) else True, f"{path}/additionalProperties", depth)
                wanted -= 1
        if wanted > 0:
            raise Unsamplable(path, f"cannot draw {low} distinct property names")
        return out
