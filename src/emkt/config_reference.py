"""The configuration reference (docs/configuration.md), generated from the config schema.

Every key's type, range, allowed values and description come from
``src/emkt/schemas/config.schema.yaml``, the file that validates a config at start-up, so the
reference cannot drift from what the workflow accepts. The value column shows config.yaml
(the paper's settings) when it is given. Regenerate from the repository root with::

    python -m emkt.config_reference --defaults config.yaml > docs/configuration.md

A test fails when the committed file and this output differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from .config import SCHEMA_PATH, load_schema

__all__ = ["REGENERATE", "render_config_reference", "schema_keys", "main"]

REGENERATE = "python -m emkt.config_reference --defaults config.yaml > docs/configuration.md"
MISSING = "–"

HEADER = f"""\
# Configuration reference

<!-- Generated from src/emkt/schemas/config.schema.yaml by `{REGENERATE}`. Do not edit by hand:
change the schema's descriptions (or the header in src/emkt/config_reference.py) and regenerate. -->

`config.yaml` holds the paper's settings. Every key is described and validated in
`src/emkt/schemas/config.schema.yaml` at start-up, and a bad value stops the run with a
message naming the key and the allowed values. Further `--configfile` files override keys
one by one (that is how `demo.yaml` works).

Paper settings (defaults): 5 seeds, 300 epochs per stage, batch 16, Adam, learning rate
x0.1 every 50 epochs (the same optimiser and schedule for every model), 224x224 inputs,
ViT-B/16 student (hidden 768, 12 layers, 12 heads, MLP 3072), Critic channels
(16, 32, 64, 128), strides (2, 2, 2, 2). Expansion draws `expand.images_per_epoch` (17,600,
the size of the labelled training split) unlabelled images per epoch.

The networks are a config choice: `student.type` (`vitautoenc`, the method's text and the
default; `swinunetr`, the method authors' final code; `unet`) and `teacher.type` (`critic`,
the default; `vit`, the authors' final code). `studies/authors-final.yaml` sets the authors'
final configuration (SwinUNETR-v2 student, ViT-B/16 regression teacher, RAdam at 1e-2,
batch 128, no schedule).

One deliberate departure from MONAI's defaults: the teacher's Critic uses BatchNorm
(`teacher.norm: BATCH`). With InstanceNorm, a constant channel is normalised away, so an
empty and a full mask look alike; measured on the demo data, the teacher's ranking of
held-out corruptions (Spearman) stayed at ~0.23 with INSTANCE and reached ~0.6 with BATCH.
`teacher.norm: INSTANCE` restores MONAI's default.

The tables below are generated from the schema. Columns: the key (`a.b` is key `b` inside
section `a`; `[]` an entry of a list; `<name>` a name you choose), its type with the allowed
values or range (a key marked optional may be left out), its value in `config.yaml` (`–`: not
set there), and the schema's description. How the keys work together: [the
pipeline](pipeline.md), [data](data.md), [using trained networks](using-networks.md),
[running at scale](scale.md).
"""


def _resolve(node: dict, schema: dict) -> dict:
    """``node`` with its ``$ref`` (``#/$defs/...``) merged in; the node's own keys win."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def _value(value: Any) -> str:
    """A YAML value as config.yaml would spell it in flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # quoted where YAML would read something else: "11037", "", "null"
        return value if value and yaml.safe_load(value) == value else f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def _range(node: dict) -> str:
    """The numeric bounds of ``node`` in words: '>= 1', 'in [0, 1]', '> 0', 'in (0.5, 1)'."""
    low = ("[", node["minimum"]) if "minimum" in node else ("(", node["exclusiveMinimum"]) \
        if "exclusiveMinimum" in node else None
    high = ("]", node["maximum"]) if "maximum" in node else (")", node["exclusiveMaximum"]) \
        if "exclusiveMaximum" in node else None
    if low and high:
        return f"in {low[0]}{_value(low[1])}, {_value(high[1])}{high[0]}"
    if low:
        return f"{'≥' if low[0] == '[' else '>'} {_value(low[1])}"
    if high:
        return f"{'≤' if high[0] == ']' else '<'} {_value(high[1])}"
    return ""


def _type(node: dict, schema: dict) -> str:
    """What a value of ``node`` may be, in a few words."""
    node = _resolve(node, schema)
    if "enum" in node:
        return "one of " + ", ".join(f"`{_value(value)}`" for value in node["enum"])
    if "const" in node:
        return f"`{_value(node['const'])}`"
    if "oneOf" in node:
        return " or ".join(_type(option, schema) for option in node["oneOf"])
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    words = []
    for kind in kinds:
        if kind == "array":
            items = _type(node.get("items", {}), schema)
            count = ""
            if "minItems" in node and node.get("maxItems") == node["minItems"]:
                count = f" of exactly {node['minItems']}"
            elif "minItems" in node:
                count = f" of at least {node['minItems']}"
            distinct = ", distinct" if node.get("uniqueItems") else ""
            words.append(f"list{count}{distinct} ({items})" if items else f"list{count}{distinct}")
        elif kind == "object":
            words.append("mapping")
        elif kind == "null":
            words.append("null")
        elif kind in ("integer", "number"):
            bounds = _range(node)
            words.append(f"{kind} {bounds}" if bounds else kind)
        elif kind == "string":
            text = "non-empty string" if node.get("minLength", 0) >= 1 else "string"
            if "pattern" in node:
                text += f" matching `{node['pattern']}`"
            words.append(text)
        else:
            words.append(kind)
    return " or ".join(words)


def _escape(text: str) -> str:
    """Text made safe for a Markdown table cell: one line; outside code spans no HTML tags and
    no emphasis; a pipe escaped everywhere (GitHub splits cells at it even in code spans)."""
    parts = " ".join(str(text).split()).split("`")
    for index, part in enumerate(parts):
        if index % 2 == 0:  # prose
            for plain, escaped in (("\\", "\\\\"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;")):
                part = part.replace(plain, escaped)
        parts[index] = part.replace("|", "\\|")
    return "`".join(parts)


def schema_keys(schema: dict) -> Iterator[tuple[str, dict, bool, tuple]]:
    """Every key of the schema, depth first in the schema's order: (dotted name, resolved node,
    required, path of its value in a config or () where a config has no single value)."""
    def walk(prefix: str, node: dict, path: tuple) -> Iterator[tuple[str, dict, bool, tuple]]:
        node = _resolve(node, schema)
        required = set(node.get("required", []))
        for key, child in node.get("properties", {}).items():
            name = f"{prefix}.{key}" if prefix else key
            child_path = path + (key,) if path or not prefix else ()
            resolved = _resolve(child, schema)
            yield name, resolved, key in required, child_path
            yield from walk(name, resolved, child_path)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            name = f"{prefix}.<name>"
            resolved = _resolve(extra, schema)
            yield name, resolved, False, ()
            yield from walk(name, resolved, ())
        items = node.get("items")
        if node.get("type") == "array" and isinstance(items, dict) and "properties" in _resolve(items, schema):
            yield from walk(f"{prefix}[]", items, ())

    yield from walk("", schema, ())


def _lookup(config: dict | None, path: tuple) -> str:
    if config is None or not path:
        return MISSING
    value: Any = config
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return f"`{_value(value)}`"


def render_config_reference(schema: dict, defaults: dict | None = None) -> str:
    """The Markdown reference of ``schema``: a fixed header, a list of sections, then per
    top-level key a table of it and every key below it (type and range, the value in
    ``defaults`` (config.yaml), the schema's description)."""
    sections: dict[str, list[str]] = {}
    for name, node, required, path in schema_keys(schema):
        top = name.split(".")[0].split("[")[0]
        kind = _type(node, schema)
        if not required:
            kind = f"{kind} (optional)" if kind else "optional"
        # a section's values are in its keys' rows; an empty one ({}) says so itself
        value = _lookup(defaults, path) if "properties" not in node or _lookup(defaults, path) == "`{}`" else MISSING
        if value == MISSING and "default" in node:
            value = f"`{_value(node['default'])}` (default)"
        description = _escape(node.get("description", "")) or MISSING
        sections.setdefault(top, []).append(f"| {_escape(f'`{name}`')} | {_escape(kind)} | {value} | {description} |")
    lines = [HEADER, "Sections: " + ", ".join(f"[`{top}`](#{top})" for top in sections) + ".", ""]
    for top, rows in sections.items():
        lines += [f"## `{top}`", "", "| key | type | config.yaml | description |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emkt.config_reference",
                                     description="Print the configuration reference (Markdown) generated from the "
                                                 "config schema.")
    parser.add_argument("--schema", type=Path, default=SCHEMA_PATH, help="the schema (default: the package's)")
    parser.add_argument("--defaults", type=Path, default=None,
                        help="a config whose values fill the value column, e.g. config.yaml (default: none)")
    args = parser.parse_args(argv)
    defaults = yaml.safe_load(args.defaults.read_text()) if args.defaults else None
    sys.stdout.write(render_config_reference(load_schema(args.schema), defaults))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
