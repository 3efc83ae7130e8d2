"""Schema sampling: values built from the JSON schemas pydantic emits validate in pydantic itself.

The strongest check is the consumer's: a chute instance validates a synthetic payload with
the cord's pydantic model, so every sampled value here goes through ``model_validate``.
"""

from __future__ import annotations

import datetime
import enum
import random
import uuid
from typing import Literal, Optional, Union

import pytest
from pydantic import BaseModel, Field

from validator.schema_sample import Unsamplable, check, sample


class Mood(str, enum.Enum):
    calm = "calm"
    busy = "busy"
    away = "away"


class Point(BaseModel):
    x: int = Field(..., ge=-5, lt=5, multiple_of=2)
    y: float = Field(..., gt=0, le=1)
    step: float = Field(0.5, multiple_of=0.1, ge=0, le=3)


class Tree(BaseModel):
    label: str = Field(..., min_length=1, max_length=8)
    children: list["Tree"] = []


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(..., ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Everything(BaseModel):
    text: str = Field(..., min_length=2, max_length=5)
    when: datetime.datetime
    day: datetime.date
    at: datetime.time
    span: datetime.timedelta
    ident: uuid.UUID
    mail: str = Field(..., json_schema_extra={"format": "email"})
    mood: Mood
    mode: Literal["a", "b"] = "a"
    fixed: Literal["only"]
    maybe: Optional[Point] = None
    point: Point
    tags: list[str] = Field(..., min_length=1, max_length=3)
    unique: set[int] = Field(default_factory=set)
    mapping: dict[str, int] = {}
    pair: tuple[int, str]
    tree: Tree
    pet: Union[Cat, Dog] = Field(..., discriminator="kind")
    code: str = Field("AB12", pattern=r"^[A-Z]{2}\d{2}$")
    flag: bool
    nothing: None = None


def test_pydantic_models_validate_for_many_seeds():
    schema = Everything.model_json_schema()
    values = [sample(schema, random.Random(seed)) for seed in range(150)]
    models = [Everything.model_validate(value) for value in values]
    assert {m.mood for m in models} == set(Mood) and {m.pet.kind for m in models} == {"cat", "dog"}
    assert {m.maybe is None for m in models} == {True, False}, "optional fields are sometimes there"
    assert len({m.text for m in models}) > 100 and len({m.ident for m in models}) == 150, "values vary"
    assert all(m.code == "AB12" and m.fixed == "only" for m in models), "pattern from the default, const kept"
    assert max(_depth(m.tree) for m in models) >= 2, "recursive models nest and still end"


def _depth(tree: Tree) -> int:
    return 1 + max((_depth(child) for child in tree.children), default=0)


def test_the_same_seed_gives_the_same_value():
    schema = Everything.model_json_schema()
    assert sample(schema, random.Random(42)) == sample(schema, random.Random(42))
    assert sample(schema, random.Random(42)) != sample(schema, random.Random(43))


@pytest.mark.parametrize("schema, holds", [
    ({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5}, lambda v: v == 4),
    ({"type": "integer", "minimum": 10, "maximum": 40, "multipleOf": 7}, lambda v: v in (14, 21, 28, 35)),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 0.001}, lambda v: 0 < v <= 0.001),
    ({"type": "number", "minimum": 0.05, "maximum": 0.35, "multipleOf": 0.1}, lambda v: 0.05 <= v <= 0.35),
    ({"type": "string", "minLength": 4, "maxLength": 4}, lambda v: len(v) == 4),
    ({"type": "string", "maxLength": 0}, lambda v: v == ""),
    ({"type": "string", "format": "date-time"}, lambda v: datetime.datetime.fromisoformat(v).tzinfo is not None),
    ({"type": "string", "format": "date"}, lambda v: datetime.date.fromisoformat(v) is not None),
    ({"type": "string", "format": "uuid"}, lambda v: uuid.UUID(v).version == 4),
    ({"type": "string", "format": "email"}, lambda v: v.endswith("@example.com")),
    ({"type": "string", "format": "uri"}, lambda v: v.startswith("https://")),
    ({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2, "uniqueItems": True},
     lambda v: sorted(v) == [False, True]),
    ({"type": "object", "additionalProperties": False, "properties": {"a": {"type": "null"}}}, lambda v: set(v) <= {"a"}),
    ({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2},
     lambda v: len(v) >= 2 and all(isinstance(x, int) for x in v.values())),
    ({"type": "object", "propertyNames": {"enum": ["k1", "k2"]}, "additionalProperties": {"const": 1}},
     lambda v: set(v) <= {"k1", "k2"}),
    ({"const": {"nested": [1, 2]}}, lambda v: v == {"nested": [1, 2]}),
    ({"enum": ["x", 2, None]}, lambda v: v in ("x", 2, None)),
    ({"type": ["string", "null"], "maxLength": 3}, lambda v: v is None or len(v) <= 3),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"$ref": "#/$defs/B"}], "$defs": {"B": {"properties": {"b": {"type": "string"}}, "required": ["b"]}}},
     lambda v: isinstance(v["a"], int) and isinstance(v["b"], str)),
    ({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "integer", "maximum": 10}]},
     lambda v: v < 0 or v > 10),
    ({"type": "string", "pattern": "^x+$", "examples": ["nope", "xxx"]}, lambda v: v == "xxx"),
    ({"prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False, "minItems": 2},
     lambda v: isinstance(v[0], int) and isinstance(v[1], str) and len(v) == 2),
    (True, lambda v: True),
])
def test_keywords_are_honoured(schema, holds):
    for seed in range(25):
        value = sample(schema, random.Random(seed))
        assert holds(value), value
        assert check(value, schema) is None


@pytest.mark.parametrize("schema, path, reason", [
    ({"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}, "required": ["code"]},
     "#/properties/code", "pattern"),
    ({"$defs": {"Loop": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Loop"}}, "required": ["next"]}},
      "$ref": "#/$defs/Loop"}, "#/$defs/Loop/properties/next", "recursion deeper"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "#", "numeric bounds"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3, "multipleOf": 5}},
      "required": ["n"]}, "#/properties/n", "multipleOf 5"),
    ({"type": "object", "properties": {"never": False}, "required": ["never"]}, "#/properties/never", "false"),
    ({"$ref": "https://example.com/schema.json"}, "#", "local"),
    ({"$ref": "#/$defs/Missing"}, "#", "points nowhere"),
    ({"type": "array", "items": {"enum": [1]}, "minItems": 2, "uniqueItems": True}, "#/items", "distinct"),
    ({"type": "nonsense"}, "#", "invalid schema"),
    ({"allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},  # B forbids A's property
                {"properties": {"b": {"type": "string"}}, "additionalProperties": False}]}, "#", "does not validate"),
])
def test_what_cannot_be_sampled_raises_unsamplable_naming_the_path(schema, path, reason):
    with pytest.raises(Unsamplable) as caught:
        sample(schema, random.Random(1))
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == path and reason in str(caught.value), str(caught.value)


def test_an_optional_unsamplable_part_is_left_out():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "pattern": "^z$"}},
              "required": ["a"]}
    values = [sample(schema, random.Random(seed)) for seed in range(20)]
    assert all("b" not in v for v in values)
    nullable = {"anyOf": [{"type": "string", "pattern": "^z$"}, {"type": "null"}]}
    assert {sample(nullable, random.Random(seed)) for seed in range(10)} == {None}


def test_check_names_the_failing_path_in_one_line():
    schema = Everything.model_json_schema()
    value = sample(schema, random.Random(3))
    assert check(value, schema) is None
    value["point"]["x"] = "seven"
    problem = check(value, schema)
    assert problem.startswith("$.point.x: ") and "'seven' is not of type 'integer'" in problem and "\n" not in problem
    assert check({"when": "yesterday"}, {"properties": {"when": {"type": "string", "format": "date"}}}) \
        .startswith("$.when: ")
    assert check({}, {"type": "nonsense"}).startswith("#: the schema itself is invalid")
    assert check([1, 2], {"type": "array", "items": {"type": "integer"}}) is None
