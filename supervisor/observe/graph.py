"""`check --graph`: a tree spec as Graphviz DOT text (and SVG through `dot`, when installed).

Supervisors are boxes (strategy and intensity inside), pools 3-D boxes, workers ellipses,
external programs hexagons, a simple_one_for_one template a dashed ellipse. The edge to a
child is solid for a permanent child, dashed for transient, dotted for temporary; a node
with matrix overrides (`errors`) has a red double border and lists the overridden rows;
significant children are bold.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from ..specs import PoolSpec, ProgramSpec, SupervisorSpec

__all__ = ["to_dot", "to_svg"]

_EDGE_STYLE = {"permanent": "solid", "transient": "dashed", "temporary": "dotted"}


def to_dot(spec: SupervisorSpec) -> str:
    """The DOT text of the tree; deterministic, raises nothing."""
    lines = [f"digraph {_quote(spec.id)} {{", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [arrowhead=none];']
    _emit(spec, "/", lines, role="")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(dot_text: str) -> bytes | None:
    """SVG rendered by Graphviz's `dot`, or None when it is not installed. Raises
    subprocess.CalledProcessError when `dot` rejects the text."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    return subprocess.run([dot, "-Tsvg"], input=dot_text.encode(), capture_output=True,
                          check=True, timeout=60).stdout


def _emit(spec: Any, node_id: str, lines: list[str], *, role: str) -> None:
    label, attrs = _describe(spec, role)
    errors = getattr(spec, "errors", None)
    if errors:
        label.append("errors: " + ", ".join(sorted(errors)))
        attrs.update(color="red", peripheries="2")
    if getattr(spec, "significant", False):
        attrs["penwidth"] = "2.5"
    attrs["label"] = "\\n".join(_escape(part) for part in label)
    lines.append(f"  {_quote(node_id)} [{_attrs(attrs)}];")
    if not isinstance(spec, SupervisorSpec) or isinstance(spec, PoolSpec):
        return
    kids = [(kid, "") for kid in spec.children]
    if spec.template is not None:
        kids.append((spec.template, "template"))
    for kid, kid_role in kids:
        kid_id = f"{node_id.rstrip('/')}/{kid.id}" + ("#template" if kid_role else "")
        _emit(kid, kid_id, lines, role=kid_role)
        style = _EDGE_STYLE.get(getattr(kid, "restart", "permanent"), "solid")
        lines.append(f"  {_quote(node_id)} -> {_quote(kid_id)} [style={style}];")


def _describe(spec: Any, role: str) -> tuple[list[str], dict[str, str]]:
    if isinstance(spec, PoolSpec):
        first = spec.children[0] if spec.children else None
        worker = _worker_name(first.worker) if first is not None else "?"
        return ([spec.id, f"pool: {spec.size} x {worker}",
                 f"max_overflow={spec.max_overflow}"], {"shape": "box3d"})
    if isinstance(spec, SupervisorSpec):
        label = [spec.id, spec.strategy,
                 f"intensity {spec.max_restarts} in {spec.max_seconds:g}s"]
        if spec.auto_shutdown != "never":
            label.append(f"auto_shutdown={spec.auto_shutdown}")
        return label, {"shape": "box", "style": "rounded"}
    if isinstance(spec, ProgramSpec):
        return ([spec.id, "$ " + " ".join(spec.command)[:40], spec.restart],
                {"shape": "hexagon"})
    label = [spec.id + (f" ({role})" if role else ""), _worker_name(spec.worker), spec.restart]
    return label, ({"shape": "ellipse", "style": "dashed"} if role else {"shape": "ellipse"})


def _worker_name(worker: Any) -> str:
    return worker if isinstance(worker, str) else f"{worker.__module__}:{worker.__qualname__}"


def _escape(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f'{key}="{value}"' if key != "label" else f'label="{value}"'
                     for key, value in attrs.items())
