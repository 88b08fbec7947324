"""Types and ranges of every setting, validated by pydantic: one rule for the file, the environment and code.

A settings class is a frozen dataclass. Each field's annotation is its type; a number may carry its
range as metadata, and any field a fix to suggest::

    max_lag_p99_seconds: Annotated[float, Bounds(gt=0, le=86_400)] = 30.0
    role: Annotated[Role | None, Fix("fix the spelling or remove role")] = None

(``pydantic.Field(ge=..., le=...)`` and ``annotated_types`` constraints are read the same way.)

**The default rule.** A number without a declared lower bound must be 0 or more, one without an upper
bound at most :data:`DEFAULT_MAX`, and a float is always finite: a field added without metadata still
refuses NaN, infinity, a negative value and an absurd one. Declare ``Bounds(ge=-...)`` where a negative
value means something.

Types are strict for values that arrive typed (the TOML file, code): ``"3000"`` is not an integer there,
``true`` is not a number, and an int is accepted for a float. Environment variables arrive as text and
are parsed (:func:`from_env`): ``"2500"`` -> 2500, ``"true"``/``"1"``/``"on"`` -> True, ``"a,b"`` -> a list.

Errors are :class:`reconcile.config.InvalidSetting`: one sentence naming the dotted key, where the value
came from and the fix. pydantic is imported on first validation, not when this module is.

>>> describe_range(spec_of(_Example, "ratio"))
'(0, 1]'
>>> describe_range(spec_of(_Example, "count"))
'[0, 1000000000]'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

__all__ = [
    "DEFAULT_MAX",
    "Bounds",
    "FieldSpec",
    "Fix",
    "check_fields",
    "describe_range",
    "from_env",
    "json_schema",
    "show",
    "spec_of",
    "specs",
    "type_name",
    "validate",
]

DEFAULT_MAX = 1_000_000_000
"""Upper bound of a number whose field declares none (its lower bound is then 0)."""

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric setting (``ge``/``gt`` below, ``le``/``lt`` above) and, optionally, its fix."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    fix: str | None = None
    """What to tell the user when the value is out of range (default: use the default value)."""


@dataclass(frozen=True)
class Fix:
    """The fix to suggest when a setting's value is refused (any type)."""

    text: str


@dataclass(frozen=True)
class FieldSpec:
    """One setting as the loader, the checks and the docs see it."""

    name: str
    kind: str
    """``bool``, ``int``, ``float``, ``str``, ``strs`` (a list of strings), ``choice`` (a Literal) or ``other``."""
    optional: bool
    default: Any
    """The field's default (``dataclasses.MISSING`` when it has none)."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    declared: tuple[bool, bool] = (False, False)
    """Whether the lower and the upper bound were declared (else the default rule set them)."""
    fix: str | None = None
    choices: tuple[Any, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


# --------------------------------------------------------------------------------------------
# Field specs from a dataclass


def _unwrap(hint: Any) -> tuple[Any, list[Any], bool]:
    """(base type, metadata, optional) of an annotation such as ``Annotated[float | None, Bounds(...)]``."""
    meta: list[Any] = []
    optional = False
    for _ in range(4):
        if typing.get_origin(hint) is Annotated:
            base, *extra = typing.get_args(hint)
            hint, meta = base, meta + extra
            continue
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = typing.get_args(hint)
            rest = [a for a in args if a is not type(None)]
            if len(rest) < len(args):
                optional = True
            if len(rest) == 1:
                hint = rest[0]
                continue
        break
    return hint, meta, optional


def _kind(base: Any) -> tuple[str, tuple[Any, ...]]:
    if base is bool:
        return "bool", ()
    if base is int:
        return "int", ()
    if base is float:
        return "float", ()
    if base is str:
        return "str", ()
    if typing.get_origin(base) is tuple and typing.get_args(base)[:1] == (str,):
        return "strs", ()
    if typing.get_origin(base) is Literal:
        return "choice", typing.get_args(base)
    return "other", ()


def _bounds_of(meta: list[Any]) -> tuple[dict[str, float], str | None]:
    found: dict[str, float] = {}
    fix = None
    for m in meta:
        if isinstance(m, Fix):
            fix = m.text
            continue
        if isinstance(m, Bounds):
            fix = m.fix or fix
        # pydantic's FieldInfo keeps its constraints in .metadata (annotated_types Ge, Gt, Le, Lt)
        for item in [m, *getattr(m, "metadata", ())]:
            for attr in ("ge", "gt", "le", "lt"):
                value = getattr(item, attr, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found[attr] = value
    return found, fix


@functools.cache
def specs(cls: type) -> dict[str, FieldSpec]:
    """Every field of the settings dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, FieldSpec] = {}
    for f in dataclasses.fields(cls):
        base, meta, optional = _unwrap(hints[f.name])
        kind, choices = _kind(base)
        bounds, fix = _bounds_of(meta)
        default = f.default if f.default is not _MISSING else (
            f.default_factory() if f.default_factory is not _MISSING else _MISSING)
        declared = ("ge" in bounds or "gt" in bounds, "le" in bounds or "lt" in bounds)
        if kind in ("int", "float"):
            if not declared[0]:
                bounds["ge"] = 0
            if not declared[1]:
                bounds["le"] = DEFAULT_MAX
        else:
            bounds = {}
        out[f.name] = FieldSpec(f.name, kind, optional, default, declared=declared, fix=fix, choices=choices,
                                **bounds)
    return out


def spec_of(cls: type, name: str) -> FieldSpec:
    """The spec of one field of ``cls``."""
    return specs(cls)[name]


# --------------------------------------------------------------------------------------------
# pydantic


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _annotation(spec: FieldSpec) -> Any:
    import annotated_types as at
    from pydantic import BeforeValidator, Field

    if spec.numeric:
        base = int if spec.kind == "int" else float
        limits = at.Interval(ge=spec.ge, gt=spec.gt, le=spec.le, lt=spec.lt)
        ann: Any = Annotated[base, limits, Field(allow_inf_nan=False)]
    elif spec.kind == "strs":
        ann = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
    elif spec.kind == "choice":
        ann = Literal[spec.choices]  # type: ignore[valid-type]
    elif spec.kind == "other":
        ann = Any
    else:
        ann = {"bool": bool, "str": str}[spec.kind]
    return ann | None if spec.optional and spec.kind != "other" else ann


@functools.cache
def _adapter(cls: type):
    """One pydantic TypeAdapter per settings class: a TypedDict of its fields, each one optional."""
    from pydantic import ConfigDict, TypeAdapter
    from typing_extensions import NotRequired, TypedDict

    shape = TypedDict(f"{cls.__name__}Values",  # type: ignore[misc]
                      {name: NotRequired[_annotation(s)] for name, s in specs(cls).items()})
    shape.__pydantic_config__ = ConfigDict(strict=True, allow_inf_nan=False)  # type: ignore[attr-defined]
    return TypeAdapter(shape)


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of ``cls``'s settings (types, ranges, defaults), e.g. for an editor or the docs."""
    schema = _adapter(cls).json_schema()
    schema["title"] = cls.__name__
    schema["additionalProperties"] = False
    for name, prop in schema.get("properties", {}).items():
        default = specs(cls)[name].default
        if default is not _MISSING and _jsonable(default):
            prop["default"] = list(default) if isinstance(default, tuple) else default
    return schema


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, tuple, list))


# --------------------------------------------------------------------------------------------
# Validation


def validate(cls: type, section: str, values: Mapping[str, Any], *,
             origin: Callable[[str], str] | str = "", env: bool = False) -> dict[str, Any]:
    """``values`` (a subset of ``cls``'s fields) checked against their types and ranges, normalised.

    Args:
        cls: The settings dataclass.
        section: The dotted section for messages (``gates``, ``tables[0]``, ``target``).
        values: Field -> value; unknown names must have been refused already.
        origin: Where each value came from (``"in reconcile.toml"``, ``"from RECONCILE__X__Y"``), as a
            function of the field name or one phrase for all.
        env: The values are environment text (parsed, not strict).

    Returns:
        The values typed and normalised (int -> float for a float, list -> tuple).

    Raises:
        InvalidSetting: the first field in declaration order whose value is refused.
    """
    from pydantic import ValidationError

    try:
        return dict(_adapter(cls).validate_python(dict(values), strict=not env))
    except ValidationError as exc:
        order = list(specs(cls))
        errors = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
        if not errors:  # pragma: no cover - pydantic reports at a field
            raise
        first = min(errors, key=lambda e: order.index(e["loc"][0]))
        name = first["loc"][0]
        where = origin(name) if callable(origin) else origin
        raise _refusal(cls, section, specs(cls)[name], values[name], first, where, env) from None


def check_fields(obj: Any, section: str) -> None:
    """Validate every field of the settings instance ``obj`` (call it first in ``__post_init__``).

    Normalises in place (a frozen dataclass too): an int given for a float becomes a float, a list a tuple.

    Raises:
        InvalidSetting: a field has the wrong type or is out of its range (NaN and infinity never pass).
    """
    cls = type(obj)
    values = {name: getattr(obj, name) for name, s in specs(cls).items() if s.kind != "other"}
    for name, value in validate(cls, section, values).items():
        if value is not values[name]:
            object.__setattr__(obj, name, value)


def from_env(cls: type, section: str, key: str, text: str, var: str) -> Any:
    """The value of environment variable ``var`` (text) for setting ``section.key``, typed and checked.

    A list of strings is written comma-separated (``a,b``); other kinds are parsed by pydantic's lax
    mode (``true``/``1``/``on``, ``2500``, ``0.5``); NaN and infinity are refused like any other value.
    """
    spec = specs(cls)[key]
    value: Any = text
    if spec.kind == "strs":
        value = tuple(part.strip() for part in text.split(",") if part.strip())
    elif spec.kind in ("int", "float", "bool"):
        value = text.strip()
    return validate(cls, section, {key: value}, origin=f"from {var}", env=True)[key]


# --------------------------------------------------------------------------------------------
# Messages

_ARTICLE = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "strs": "a list of strings"}


def type_name(value: Any) -> str:
    """What a TOML value is, for a message: ``a string``, ``an integer``, ``a table``..."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def show(value: Any) -> str:
    """A value as a message shows it: ``repr``, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number_text(value: float) -> str:
    """``3000``, ``0.5``, ``86400`` (a whole float without its ``.0``).

    >>> number_text(86400.0), number_text(0.05), number_text(10 * 1024 * 1024)
    ('86400', '0.05', '10485760')
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return str(value)


def _lower_text(spec: FieldSpec) -> str:
    if spec.gt is not None:
        return f"greater than {number_text(spec.gt)}"
    return "0 or more" if spec.ge == 0 else f"at least {number_text(spec.ge)}"


def _upper_text(spec: FieldSpec) -> str:
    return f"less than {number_text(spec.lt)}" if spec.lt is not None else f"at most {number_text(spec.le)}"


def range_problem(spec: FieldSpec, value: float) -> str:
    """What a number out of range must be: its lower bound when below it, else its whole range.

    >>> range_problem(FieldSpec("f", "float", False, 0.5, gt=0, le=1, declared=(True, True)), 1.5)
    'must be greater than 0 and at most 1'
    >>> range_problem(FieldSpec("n", "int", False, 8, ge=1, le=100, declared=(True, True)), 0)
    'must be at least 1'
    """
    below = (spec.gt is not None and not value > spec.gt) or (spec.ge is not None and not value >= spec.ge)
    if below:
        return f"must be {_lower_text(spec)}"
    if spec.ge is not None and spec.le is not None:
        return f"must be between {number_text(spec.ge)} and {number_text(spec.le)}"
    return f"must be {_lower_text(spec)} and {_upper_text(spec)}"


def describe_range(spec: FieldSpec) -> str:
    """A number's range in interval notation (``[1, 3000]``, ``(0, 1]``), "" for other kinds."""
    if not spec.numeric:
        return ""
    low = f"({number_text(spec.gt)}" if spec.gt is not None else f"[{number_text(spec.ge)}"
    high = f"{number_text(spec.lt)})" if spec.lt is not None else f"{number_text(spec.le)}]"
    return f"{low}, {high}"


def _example(spec: FieldSpec) -> Any:
    default = spec.default
    if default is _MISSING or default is None or default == () or default == "":
        return {"int": 1, "float": 1.0, "bool": "true", "strs": "...", "str": "..."}.get(spec.kind, "...")
    if isinstance(default, tuple):
        return default[0]
    if isinstance(default, bool):
        return "true" if default else "false"
    return number_text(default) if isinstance(default, (int, float)) else default


def _type_fix(key: str, kind: str, example: Any) -> str:
    if kind == "str":
        return f'write it in quotes, e.g. {key} = "{example}"'
    if kind == "int":
        return f"write a whole number without quotes, e.g. {key} = {example}"
    if kind == "float":
        return f"write a number without quotes, e.g. {key} = {example}"
    if kind == "bool":
        return f"write {key} = true or {key} = false, without quotes"
    return f'write a list of names, e.g. {key} = ["{example}"]'


def _refusal(cls: type, section: str, spec: FieldSpec, value: Any, error: dict[str, Any], origin: str,
             env: bool):
    from reconcile.config import InvalidSetting

    kind, etype = spec.kind, error["type"]
    default_fix = spec.fix or (f"use the default {_example(spec)}" if spec.default not in (_MISSING, None)
                               else "fix the value")
    if etype == "finite_number" or (spec.numeric and isinstance(value, float) and not math.isfinite(value)):
        return InvalidSetting(section, spec.name, f"must be a finite number, got {show(value)}", default_fix, origin)
    if etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        number = float(value) if isinstance(value, str) else value  # environment text, parsed already
        shown = value.strip() if isinstance(value, str) else number_text(value)
        return InvalidSetting(section, spec.name, f"{range_problem(spec, number)}, got {shown}", default_fix, origin)
    if kind == "choice" or etype == "literal_error":
        return InvalidSetting(section, spec.name,
                              f"must be one of {', '.join(map(str, spec.choices))}, got {show(value)}",
                              spec.fix or "fix the spelling", origin)
    if kind in _ARTICLE:
        var = origin[len("from "):] if origin.startswith("from ") else ""
        if env:
            return InvalidSetting(section, spec.name, f"must be {_ARTICLE[kind]}, got {show(value)}",
                                  f"export it as e.g. {var}={_example(spec)}", origin)
        return InvalidSetting(section, spec.name,
                              f"must be {_ARTICLE[kind]}, got {show(value)} ({type_name(value)})",
                              _type_fix(spec.name, kind, _example(spec)), origin)
    return InvalidSetting(section, spec.name, f"is not valid ({error.get('msg', etype)})", default_fix, origin)


@dataclass(frozen=True)
class _Example:
    """For the doctests above."""

    ratio: Annotated[float, Bounds(gt=0, le=1)] = 0.5
    count: int = 3
