"""A Module's fields are its config schema (big_vision style): one list of options and defaults.

    schema.config_of(DeepLab, name="deeplab_v3")      # ConfigDict of every field at its default
    kwargs = schema.kwargs_from(DeepLab, cfg, where="config.model")   # checked Module kwargs

`kwargs_from` rejects a key that is not a field (naming it and the valid ones) and a value whose
type does not fit the field's annotation (naming the key, the value and the expected type); lists
become tuples and ints become floats where the annotation says so. Fields that are wiring rather
than options (`norm`, `parent`, `name`, ...) are left out by the caller's `exclude`.
"""

import dataclasses
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import ml_collections

# Never config options: Flax's own fields.
_FLAX_FIELDS = ("parent", "name")


def option_fields(cls, exclude: Iterable[str] = ()) -> Dict[str, dataclasses.Field]:
  """The config options of Module class `cls`: its dataclass fields minus `exclude`."""
  skip = set(exclude) | set(_FLAX_FIELDS)
  return {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}


def _default(field: dataclasses.Field):
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:  # pytype: disable=attribute-error
    return field.default_factory()  # pytype: disable=attribute-error
  return None


def defaults_of(cls, exclude: Iterable[str] = ()) -> Dict[str, Any]:
  return {name: _default(f) for name, f in option_fields(cls, exclude).items()}


def config_of(cls, exclude: Iterable[str] = (), to_config: Optional[Mapping[str, Callable]] = None,
              **overrides) -> ml_collections.ConfigDict:
  """A ConfigDict of `cls`'s options at their defaults, then `overrides` (keys must be options:
  fields not in `exclude`).
  `to_config[key](default)` turns a default into its config form (e.g. a dtype into its name)."""
  to_config = dict(to_config or {})
  values = defaults_of(cls, exclude)
  for key, value in overrides.items():
    if key not in values:
      raise unknown_key_error(key, values, f"{cls.__name__} options")
    values[key] = value
  for key, fn in to_config.items():
    if key in values:
      values[key] = fn(values[key])
  return ml_collections.ConfigDict(values)


def unknown_key_error(key: str, valid: Iterable[str], where: str) -> ValueError:
  valid = ", ".join(sorted(valid)) or "(none)"
  return ValueError(f"unknown key {key!r} in {where}; valid keys: {valid}")


def kwargs_from(cls, cfg: Mapping[str, Any], *, where: str, exclude: Iterable[str] = (),
                ignore: Iterable[str] = (), convert: Optional[Mapping[str, Callable]] = None,
                hints: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
  """Checked keyword arguments for `cls(**kwargs)` from the ConfigDict (or dict) `cfg`.

  Keys in `ignore` are skipped (e.g. the registry's `name`); keys in `exclude` are not options and
  are errors like unknown keys. `convert[key](value)` builds a field's value from its config form
  (it does its own checks); other values are checked against the field's annotation. `hints[key]`
  is appended to the error for a known misplaced key.
  """
  fields = option_fields(cls, exclude)
  convert = dict(convert or {})
  hints = dict(hints or {})
  annotations = typing.get_type_hints(cls)
  kwargs = {}
  for key in cfg.keys():
    if key in set(ignore):
      continue
    if key not in fields:
      error = unknown_key_error(key, fields, where)
      if key in hints:
        error = ValueError(f"{error} ({hints[key]})")
      raise error
    value = cfg[key]
    if key in convert:
      kwargs[key] = convert[key](value)
    else:
      kwargs[key] = check_value(value, annotations.get(key, Any), f"{where}.{key}")
  return kwargs


def _type_name(annotation) -> str:
  if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
    return annotation.__name__
  return str(annotation).replace("typing.", "")


def check_value(value, annotation, key: str):
  """`value` converted to fit `annotation` (lists -> tuples, int -> float), or a ValueError
  naming `key`, the value and the expected type."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  ok, converted = _fit(value, annotation)
  if not ok:
    raise ValueError(f"{key} = {value!r} ({type(value).__name__}) does not fit its type "
                     f"{_type_name(annotation)}")
  return converted


def _fit(value, annotation):
  if annotation is Any or annotation is typing.Any:
    return True, value
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin is typing.Union:
    if value is None and type(None) in args:
      return True, None
    for arg in args:
      if arg is type(None):
        continue
      ok, converted = _fit(value, arg)
      if ok:
        return True, converted
    return False, None
  if annotation is bool:
    return isinstance(value, bool), value
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool), value
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False, None
    return True, float(value)
  if annotation is str:
    return isinstance(value, str), value
  if origin in (tuple, typing.Tuple, list, typing.Sequence, typing.List) or (
      origin is not None and getattr(origin, "__name__", "") == "Sequence"):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      return False, None
    if not args or args == ((),):
      return True, tuple(value)
    if len(args) == 2 and args[1] is Ellipsis or origin is not tuple:
      item_type = args[0]
      items = [_fit(v, item_type) for v in value]
    else:
      if len(args) != len(value):
        return False, None
      items = [_fit(v, t) for v, t in zip(value, args)]
    if not all(ok for ok, _ in items):
      return False, None
    return True, tuple(v for _, v in items)
  if isinstance(annotation, type):
    return isinstance(value, annotation), value
  return True, value
