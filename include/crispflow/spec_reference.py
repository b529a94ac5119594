"""The spec reference, generated from the pydantic models of crispflow.spec (every field, type, default, bounds and
description), so the README cannot drift from the code.

    python -m crispflow.spec_reference                    # print the Markdown
    python -m crispflow.spec_reference --write README.md  # replace the block between the markers
    python -m crispflow.spec_reference --check README.md  # exit 1 if the block is stale

The block lives between `<!-- spec-reference:start -->` and `<!-- spec-reference:end -->`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from crispflow import spec as spec_module
from crispflow.estimators import BUILTINS

START = "<!-- spec-reference:start -->"
END = "<!-- spec-reference:end -->"
HEADING = "####"
# Named types rendered by name (their values are listed once, in their own section).
NAMED = {id(spec_module.Metric): "metric (see Metrics)"}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value: object) -> str:
    return f"`{value}`"


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (list[X], X | None, a discriminated union ...)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _type(annotation: Any) -> str:
    if id(annotation) in NAMED:
        return NAMED[id(annotation)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        models = _models(annotation)
        if models and len(models) == len([a for a in args if a is not type(None)]) and len(models) > 1:
            kinds = ", ".join(f"`{_kind(m)}`" for m in models)
            return f"source ({kinds}; see `sources[]`)"
        return " | ".join("null" if a is type(None) else _type(a) for a in args)
    if origin is list:
        return f"list of {_inner(args[0])}" if args else "list"
    if origin is dict:
        return f"map {_inner(args[0])} → {_inner(args[1])}" if args else "map"
    if annotation is Any:
        return "any"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _inner(annotation: Any) -> str:
    """An element type, parenthesised when it is a union (`list of (str | int)`)."""
    text = _type(annotation)
    return f"({text})" if " | " in text else text


def _kind(model: type[BaseModel]) -> str:
    """The discriminator value of a source model (`kind: file`)."""
    return get_args(model.model_fields["kind"].annotation)[0]


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value is None:
        return _code("null")
    if isinstance(value, bool):
        return _code(str(value).lower())
    if isinstance(value, str):
        return _code(value) if value else '`""`'
    return _code(json.dumps(value))


def _bounds(field: FieldInfo, annotation: Any) -> str:
    out = []
    for meta in field.metadata:
        if isinstance(meta, at.Ge):
            out.append(f"≥ {meta.ge}")
        elif isinstance(meta, at.Gt):
            out.append(f"> {meta.gt}")
        elif isinstance(meta, at.Le):
            out.append(f"≤ {meta.le}")
        elif isinstance(meta, at.Lt):
            out.append(f"< {meta.lt}")
        elif isinstance(meta, at.MinLen):
            unit = "item" if get_origin(annotation) is list else "character"
            out.append(f"at least {meta.min_length} {unit}{'s' if meta.min_length > 1 else ''}")
        elif getattr(meta, "pattern", None):
            out.append(f"pattern `{meta.pattern}`")
    return ", ".join(out)


def _child(path: str, name: str, annotation: Any) -> str:
    """The section path of a field holding models (`training.candidates[]`)."""
    child = f"{path}.{name}" if path else name
    return child + ("[]" if get_origin(annotation) in (list, dict) else "")


def _row(path: str, name: str, field: FieldInfo) -> str:
    annotation = field.annotation
    kind = _type(annotation)
    if _models(annotation) and "source" not in kind:
        kind = kind.replace("mapping", f"mapping (see `{_child(path, name, annotation)}`)")
    cells = [f"`{name}`", kind, _default(field), _bounds(field, annotation), field.description or ""]
    return "| " + " | ".join(_escape(c) for c in cells) + " |"


def _sections(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path, model) for `model` and every model below it, depth first in field order."""
    yield path, model
    for name, field in model.model_fields.items():
        models = _models(field.annotation)
        for sub in models:
            child = _child(path, name, field.annotation)
            if len(models) > 1 and "kind" in sub.model_fields:
                child += f" (kind: {_kind(sub)})"
            yield from _sections(sub, child)


def _table(path: str, model: type[BaseModel]) -> list[str]:
    lines = ["| field | type | default | bounds | description |", "|---|---|---|---|---|"]
    lines += [_row(path, name, field) for name, field in model.model_fields.items()]
    return lines


def _doc(model: type[BaseModel]) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def _metrics() -> list[str]:
    lines = [f"{HEADING} Metrics", "", "| task | metrics (first: default blessing metric) | lower is better |",
             "|---|---|---|"]
    for task, metrics in spec_module.TASK_METRICS.items():
        primary = spec_module.TASK_DEFAULT_METRICS[task][1]
        ordered = [primary, *[m for m in metrics if m != primary]]
        lower = [m for m in ordered if m in spec_module.LOWER_IS_BETTER]
        lines.append(f"| {task} | {', '.join(_code(m) for m in ordered)} | "
                     f"{', '.join(_code(m) for m in lower) or '—'} |")
    return lines


def _estimators() -> list[str]:
    lines = [f"{HEADING} Built-in estimators", "", "| name | binary | multiclass | regression |", "|---|---|---|---|"]
    for name, tasks in BUILTINS.items():
        cells = [_code(tasks[t].rsplit(".", 1)[1]) if t in tasks else "—" for t in ("binary", "multiclass",
                                                                                       "regression")]
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    return lines


def render() -> str:
    """The Markdown spec reference (without the markers)."""
    lines = ["<!-- Generated from include/crispflow/spec.py by `python -m crispflow.spec_reference --write "
             "README.md`; edit the models' descriptions, not this block. -->", ""]
    for path, model in _sections(spec_module.PipelineSpec, ""):
        title = f"`{path}`" if path else "Top level"
        lines += [f"{HEADING} {title}", ""]
        doc = _doc(model)
        lines += [doc, ""] if doc else []
        lines += [*_table(path, model), ""]
    lines += [*_metrics(), "", *_estimators()]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """`text` with the content between the markers replaced by `block`; ValueError if the markers are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} block")
    return text[: start + len(START)] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crispflow.spec_reference", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block differs from the models")
    group.add_argument("--write", type=Path, metavar="FILE", help="rewrite FILE's block from the models")
    args = parser.parse_args(argv)
    block = render()
    path = args.check or args.write
    if path is None:
        sys.stdout.write(block)
        return 0
    text = path.read_text()
    try:
        updated = replace_block(text, block)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.write:
        if updated != text:
            path.write_text(updated)
        return 0
    if updated != text:
        print(f"{path}: the spec reference is stale; run python -m crispflow.spec_reference --write {path}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
