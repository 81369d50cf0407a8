"""Config overrides written as {'section.field': value}: the one helper for tests, tools and
benchmarks (main.py takes the same keys as --config.section.field=value flags)."""

import ast
from typing import Any

import ml_collections


def apply(config: ml_collections.ConfigDict, overrides: dict[str, Any]
          ) -> ml_collections.ConfigDict:
  """Sets each 'a.b.c' key of `overrides` in `config` (in place) and returns `config`.

  A key that names no existing field raises KeyError naming it: an override is never silently
  added as a new field. Values keep the field's type rules of ml_collections.
  """
  for key, value in overrides.items():
    *path, field = key.split('.')
    node = config
    for part in path:
      if part not in node:
        raise KeyError(f'No config section {part!r} in override {key!r}.')
      node = node[part]
    if field not in node:
      raise KeyError(f'No config field {key!r}.')
    node[field] = value
  return config


def parse(text: str) -> tuple[str, Any]:
  """'section.field=value' -> ('section.field', value); the value read as a Python literal
  when it is one ('3', '(1, 2)', 'True'), else kept as a string."""
  key, sep, raw = text.partition('=')
  if not sep or not key:
    raise ValueError(f'Override {text!r}: expected SECTION.FIELD=VALUE.')
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return key, value


def as_flags(overrides: dict[str, Any]) -> list[str]:
  """{'training.batch_size': 16} -> ['--config.training.batch_size=16'] for main.py."""
  return [f'--config.{key}={value}' for key, value in overrides.items()]
