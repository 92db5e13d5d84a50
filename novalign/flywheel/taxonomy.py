"""The prompt taxonomy (report section 3.1.1): six dimensions -- ability, attributes, domain, language,
difficulty, constraints -- as an editable, versioned YAML file, validated on load.

Format (the bundled default is ``novalign/assets/flywheel/taxonomy.yaml``)::

    name: novalign-default
    version: 3
    dimensions:
      - name: ability
        description: The skill the model needs to answer.
        labels:
          - name: Math
            description: Calculation, algebra, geometry, proofs.
            examples: ["What is 17 * 23?"]
      - name: attributes
        under: ability              # every label names its parent: a leaf of `ability`
        labels:
          - {name: arithmetic, parent: Math, description: ...}
      - name: language
        labels:
          - name: Chinese           # a group: its children are the leaves
            children:
              - {name: zh-Hans, description: Simplified Chinese}

A record's labels are one **leaf** per dimension (groups only organize). Errors name the file's line:
an unknown ``under`` dimension or ``parent`` label, a label name seen twice in one dimension (leaf or
group), an empty level (no labels, ``children: []``, a parent leaf with no child labels), unknown keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TaxonomyError", "Label", "Dimension", "Taxonomy", "load_taxonomy", "parse_taxonomy",
           "DEFAULT_TAXONOMY", "DIMENSIONS"]

DEFAULT_TAXONOMY = Path(__file__).resolve().parent.parent / "assets" / "flywheel" / "taxonomy.yaml"
DIMENSIONS = ("ability", "attributes", "domain", "language", "difficulty", "constraints")
"""The report's six dimensions, in its order (a taxonomy may add more)."""

_TOP_KEYS = {"name", "version", "description", "dimensions"}
_DIM_KEYS = {"name", "description", "under", "labels"}
_LABEL_KEYS = {"name", "description", "examples", "parent", "children"}


class TaxonomyError(ValueError):
    """A taxonomy file problem: ``file:line: message``."""

    def __init__(self, path: str, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass
class Label:
    name: str
    description: str = ""
    examples: list[str] = field(default_factory=list)
    parent: str | None = None  # a leaf of the dimension's `under` dimension
    children: list[Label] = field(default_factory=list)
    line: int = 0

    def walk(self, ancestors: tuple[str, ...] = ()):
        """``(label, ancestors)`` for this label and every label below it, depth first."""
        yield self, ancestors
        for child in self.children:
            yield from child.walk(ancestors + (self.name,))


@dataclass
class Dimension:
    name: str
    description: str = ""
    under: str | None = None
    labels: list[Label] = field(default_factory=list)
    line: int = 0
    under_line: int = 0

    def all_labels(self):
        for top in self.labels:
            yield from top.walk()

    @property
    def leaves(self) -> list[str]:
        """The leaf names, in file order: the values a record's label may take."""
        return [lab.name for lab, _ in self.all_labels() if not lab.children]

    def path(self, leaf: str) -> tuple[str, ...]:
        """The groups above ``leaf`` and the leaf itself (``("Chinese", "zh-Hans")``)."""
        for lab, ancestors in self.all_labels():
            if lab.name == leaf:
                return ancestors + (leaf,)
        raise KeyError(f"{self.name}: no label {leaf!r}")

    def label(self, name: str) -> Label:
        for lab, _ in self.all_labels():
            if lab.name == name:
                return lab
        raise KeyError(f"{self.name}: no label {name!r}")


@dataclass
class Taxonomy:
    name: str
    version: str
    dimensions: dict[str, Dimension]
    source: str = "<string>"
    digest: str = ""  # SHA-256 of the file's text: models and steps record which taxonomy they used

    def leaves(self, dim: str) -> list[str]:
        return self.dimensions[dim].leaves

    def check(self, labels: dict[str, Any]) -> dict[str, str]:
        """Problems of a record's ``labels`` per dimension (empty: valid). A missing or null dimension is no
        problem (not labeled yet); a value that is no leaf is, and so is an attribute whose parent is not the
        record's ability."""
        problems: dict[str, str] = {}
        for dim, value in labels.items():
            if dim not in self.dimensions:
                problems[dim] = f"unknown dimension (known: {', '.join(self.dimensions)})"
            elif value is not None and value not in self.dimensions[dim].leaves:
                problems[dim] = f"{value!r} is no leaf of {dim}"
        for dim, d in self.dimensions.items():
            value, parent_value = labels.get(dim), labels.get(d.under) if d.under else None
            if d.under and value is not None and dim not in problems and parent_value is not None:
                parent = d.label(value).parent
                if parent != parent_value:
                    problems[dim] = f"{value!r} belongs under {d.under} {parent!r}, not {parent_value!r}"
        return problems

    def prompt_section(self, examples_per_leaf: int = 2, dims: Sequence[str] | None = None) -> str:
        """The taxonomy as the labeling prompt's reference: each dimension's leaves, definitions, examples;
        ``dims``: only those dimensions, in taxonomy order (a labeler asked for two dimensions need not read
        the other four: the bundled taxonomy's prompt shrinks from 3.5k to 1.1k characters for ability and
        language)."""
        out = []
        for d in self.dimensions.values():
            if dims is not None and d.name not in dims:
                continue
            out.append(f"## {d.name}" + (f" -- {d.description}" if d.description else ""))
            for lab, ancestors in d.all_labels():
                if lab.children:
                    continue
                where = "/".join(ancestors)
                head = f"- {lab.name}" + (f" (under {d.under} {lab.parent})" if lab.parent else "")
                head += f" [{where}]" if where else ""
                out.append(head + (f": {lab.description}" if lab.description else ""))
                for ex in lab.examples[:examples_per_leaf]:
                    out.append(f"    e.g. {ex}")
        return "\n".join(out)


# ------------------------------------------------------------------------------------------------ loading


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node, path: str, what: str, allowed: set[str]) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        raise TaxonomyError(path, _line(node), f"{what} must be a mapping")
    out: dict[str, yaml.Node] = {}
    for key, value in node.value:
        name = key.value
        if name in out:
            raise TaxonomyError(path, _line(key), f"{what}: key {name!r} given twice")
        if name not in allowed:
            raise TaxonomyError(path, _line(key), f"{what}: unknown key {name!r} (known: {', '.join(sorted(allowed))})")
        out[name] = value
    return out


def _scalar(node: yaml.Node, path: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.value == "":
        raise TaxonomyError(path, _line(node), f"{what} must be a non-empty string")
    return node.value


def _sequence(node: yaml.Node, path: str, what: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise TaxonomyError(path, _line(node), f"{what} must be a list")
    if not node.value:
        raise TaxonomyError(path, _line(node), f"{what} is an empty level (give at least one label)")
    return node.value


def _label(node: yaml.Node, path: str, dim: str) -> Label:
    m = _mapping(node, path, f"a label of {dim}", _LABEL_KEYS)
    if "name" not in m:
        raise TaxonomyError(path, _line(node), f"a label of {dim} has no name")
    name = _scalar(m["name"], path, f"{dim} label name")
    lab = Label(name=name, line=_line(node))
    if "description" in m:
        lab.description = _scalar(m["description"], path, f"{dim} {name}: description")
    if "examples" in m:
        lab.examples = [_scalar(x, path, f"{dim} {name}: example") for x in _sequence(m["examples"], path,
                                                                                      f"{dim} {name}: examples")]
    if "parent" in m:
        lab.parent = _scalar(m["parent"], path, f"{dim} {name}: parent")
    if "children" in m:
        lab.children = [_label(c, path, dim) for c in _sequence(m["children"], path, f"{dim} {name}: children")]
    return lab


def _dimension(node: yaml.Node, path: str) -> Dimension:
    m = _mapping(node, path, "a dimension", _DIM_KEYS)
    if "name" not in m:
        raise TaxonomyError(path, _line(node), "a dimension has no name")
    name = _scalar(m["name"], path, "dimension name")
    d = Dimension(name=name, line=_line(node))
    if "description" in m:
        d.description = _scalar(m["description"], path, f"{name}: description")
    if "under" in m:
        d.under, d.under_line = _scalar(m["under"], path, f"{name}: under"), _line(m["under"])
    if "labels" not in m:
        raise TaxonomyError(path, _line(node), f"dimension {name} is an empty level (no labels)")
    d.labels = [_label(x, path, name) for x in _sequence(m["labels"], path, f"{name}: labels")]
    seen: dict[str, int] = {}
    for lab, _ in d.all_labels():
        if lab.name in seen:
            raise TaxonomyError(path, lab.line, f"{name}: label {lab.name!r} also on line {seen[lab.name]}; "
                                "names must be unique within a dimension")
        seen[lab.name] = lab.line
    return d


def _check_links(dims: dict[str, Dimension], path: str) -> None:
    for d in dims.values():
        if d.under is None:
            for lab, _ in d.all_labels():
                if lab.parent is not None:
                    raise TaxonomyError(path, lab.line, f"{d.name} {lab.name}: parent given, but dimension "
                                        f"{d.name} has no `under`")
            continue
        if d.under not in dims or d.under == d.name:
            raise TaxonomyError(path, d.under_line, f"{d.name}: under {d.under!r} is no other dimension "
                                f"(known: {', '.join(dims)})")
        parents = dims[d.under].leaves
        used = set()
        for lab, _ in d.all_labels():
            if lab.children:
                continue
            if lab.parent is None:
                raise TaxonomyError(path, lab.line, f"{d.name} {lab.name}: needs a parent (a {d.under} leaf)")
            if lab.parent not in parents:
                raise TaxonomyError(path, lab.line, f"{d.name} {lab.name}: unknown parent {lab.parent!r} "
                                    f"(not a leaf of {d.under}: {', '.join(parents)})")
            used.add(lab.parent)
        for p in parents:
            if p not in used:
                raise TaxonomyError(path, dims[d.under].label(p).line, f"{d.under} {p}: empty level (no "
                                    f"{d.name} label has it as parent)")


def parse_taxonomy(text: str, path: str = "<string>") -> Taxonomy:
    """A :class:`Taxonomy` from YAML text; :class:`TaxonomyError` names ``path`` and the line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TaxonomyError(path, mark.line + 1 if mark else 1, f"not YAML: {exc}") from None
    if root is None:
        raise TaxonomyError(path, 1, "empty file")
    m = _mapping(root, path, "the taxonomy", _TOP_KEYS)
    for key in ("name", "version", "dimensions"):
        if key not in m:
            raise TaxonomyError(path, _line(root), f"the taxonomy has no {key!r}")
    dims: dict[str, Dimension] = {}
    for node in _sequence(m["dimensions"], path, "dimensions"):
        d = _dimension(node, path)
        if d.name in dims:
            raise TaxonomyError(path, d.line, f"dimension {d.name!r} also on line {dims[d.name].line}")
        dims[d.name] = d
    _check_links(dims, path)
    return Taxonomy(name=_scalar(m["name"], path, "name"), version=_scalar(m["version"], path, "version"),
                    dimensions=dims, source=path, digest=hashlib.sha256(text.encode()).hexdigest()[:16])


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """The taxonomy in ``path`` (default: the bundled one)."""
    p = Path(path) if path is not None else DEFAULT_TAXONOMY
    return parse_taxonomy(p.read_text(encoding="utf-8"), str(p))
