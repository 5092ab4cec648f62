"""Collect the ``ErrorInfo.reason`` strings the code can send, and the reason catalogue of docs/contracts.md.

The code side is read with ``ast`` (nothing is imported or run), from every hand-written module under
``services/`` and ``libs/parapet/`` (generated ``*_pb2*.py`` left out). A reason reaches the wire in a few
shapes, each collected here:

- ``SomeError(..., reason="X")``: a keyword ``reason`` with a string literal, on any call (typed errors, but
  also ``FallbackAttempt(reason=...)`` and ``AuthorizeResponse(reason=...)``, whose reasons the catalogue lists
  too);
- a literal passed positionally where a function or class defined in the code names that parameter
  ``reason`` (``rejected("OIDC_TOKEN_EXPIRED", ...)``, ``ExtractionError("DOCUMENT_EMPTY", ...)``);
- a class's ``default_reason = "X"``, sent by every constructor call that gives no ``reason``;
- ``return "X", "message"`` (a (reason, message) pair, as ``key_refusal`` returns);
- the values of a dict literal assigned to a name holding ``REASON`` (``REASONS = {"timeout": ...}``).

Where the call's class is a :class:`parapet.kit.errors.ParapetError` subclass (found through the ``class``
statements, also of subclasses defined in services), the gRPC code is known and collected with the reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.unit.contracts.contracts_support import ROOT

CONTRACTS_MD = ROOT / "docs" / "contracts.md"
SCANNED = (ROOT / "services", ROOT / "libs" / "parapet")
REASON = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# Backticked words in the catalogue that are not reasons: the settings that bound a limit.
NOT_REASONS_IN_DOCS = re.compile(r"^PARAPET_")


@dataclass(frozen=True)
class Raised:
    """A reason the code can send; ``code`` is the gRPC code name when the raising class is known."""

    reason: str
    code: str | None
    where: str  # path:line, for the failure message


def python_files() -> Iterator[Path]:
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            if "_pb2" not in path.name:
                yield path


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and REASON.match(node.value):
        return node.value
    return None


def _reason_index(args: ast.arguments, *, method: bool) -> int | None:
    """Position of a ``reason`` parameter among the positional ones (``self`` not counted)."""
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if method and names:
        names = names[1:]
    return names.index("reason") if "reason" in names else None


@dataclass
class _Module:
    path: Path
    tree: ast.Module

    @property
    def where(self) -> str:
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else str(self.path)


def _error_classes(modules: list[_Module]) -> tuple[dict[str, str], dict[str, str]]:
    """(class name -> gRPC code name, class name -> default reason) for ParapetError and its subclasses."""
    bases: dict[str, list[str]] = {}
    codes: dict[str, str] = {}
    defaults: dict[str, str] = {}
    for module in modules:
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases[node.name] = [n for n in (_call_name(b) for b in node.bases) if n]
            for stmt in node.body:
                if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
                    continue
                target = stmt.targets[0]
                if not isinstance(target, ast.Name):
                    continue
                if target.id == "code" and isinstance(stmt.value, ast.Attribute):
                    codes[node.name] = stmt.value.attr  # grpc.StatusCode.X
                elif target.id == "default_reason" and isinstance(stmt.value, ast.Constant):
                    defaults[node.name] = str(stmt.value.value)
    errors = {"ParapetError"}
    changed = True
    while changed:  # subclasses, to any depth, inherit code and default reason
        changed = False
        for name, parents in bases.items():
            parent = next((p for p in parents if p in errors), None)
            if parent is None:
                continue
            if name not in errors:
                errors.add(name)
                changed = True
            for table in (codes, defaults):
                if name not in table and parent in table:
                    table[name] = table[parent]
                    changed = True
    return {n: codes[n] for n in errors if n in codes}, {n: defaults[n] for n in errors if n in defaults}


def _forwarded_code(body: ast.AST, codes: dict[str, str]) -> str | None:
    """The code of the typed error ``body`` builds from its ``reason`` parameter (``reason=reason`` or
    ``reason=self.reason``), if it builds one."""
    for node in ast.walk(body):
        if not isinstance(node, ast.Call) or _call_name(node.func) not in codes:
            continue
        for keyword in node.keywords:
            value = keyword.value
            forwarded = (isinstance(value, ast.Name) and value.id == "reason") or (
                isinstance(value, ast.Attribute) and value.attr == "reason"
            )
            if keyword.arg == "reason" and forwarded:
                return codes[_call_name(node.func) or ""]
    return None


@dataclass(frozen=True)
class _ReasonParam:
    """A function or class taking a ``reason``: where it sits positionally, its default, the code it raises."""

    index: int | None
    default: str | None
    code: str | None


def _reason_params(modules: list[_Module], codes: dict[str, str]) -> dict[str, _ReasonParam]:
    """Callable name -> its ``reason`` parameter, for the functions and classes defined in the code."""
    found: dict[str, _ReasonParam] = {}

    def param(args: ast.arguments, body: ast.AST, *, method: bool) -> _ReasonParam | None:
        index = _reason_index(args, method=method)
        kwonly = [a.arg for a in args.kwonlyargs]
        if index is None and "reason" not in kwonly:
            return None
        default: str | None = None
        if index is not None:
            positional = [*args.posonlyargs, *args.args]
            offset = len(positional) - len(args.defaults)  # defaults belong to the last parameters
            at = index + (1 if method else 0) - offset
            default = _literal(args.defaults[at]) if at >= 0 else None
        else:
            default = _literal(args.kw_defaults[kwonly.index("reason")])
        return _ReasonParam(index, default, _forwarded_code(body, codes))

    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found_param = param(node.args, node, method=False)
                if found_param is not None:
                    found[node.name] = found_param
            elif isinstance(node, ast.ClassDef) and node.name not in codes:
                for stmt in node.body:
                    if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                        found_param = param(stmt.args, node, method=True)
                        if found_param is not None:
                            found[node.name] = found_param
    return found


def _super_init_codes(modules: list[_Module], codes: dict[str, str]) -> dict[int, str]:
    """id() of each ``super().__init__(...)`` call inside a typed error class -> that class's code."""
    out: dict[int, str] = {}
    for module in modules:
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.ClassDef) or node.name not in codes:
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "__init__"
                    and isinstance(call.func.value, ast.Call)
                    and _call_name(call.func.value.func) == "super"
                ):
                    out[id(call)] = codes[node.name]
    return out


def raised_reasons(paths: Iterable[Path] | None = None) -> list[Raised]:
    """The reasons sent by the modules at ``paths`` (default: every hand-written module of the product)."""
    modules = [_Module(p, ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in paths or python_files()]
    codes, defaults = _error_classes(modules)
    params = _reason_params(modules, codes)
    super_inits = _super_init_codes(modules, codes)
    out: list[Raised] = []
    for name, found in params.items():
        if found.default is not None:
            out.append(Raised(found.default, found.code, f"default of {name}(reason=...)"))
    for module in modules:
        for node in ast.walk(module.tree):
            where = f"{module.where}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = _call_name(node.func) or ""
                target = params.get(name)
                code = super_inits.get(id(node)) or codes.get(name) or (target.code if target else None)
                keyword = next((k for k in node.keywords if k.arg == "reason"), None)
                reason = _literal(keyword.value) if keyword is not None else None
                at = target.index if target is not None else None
                if reason is None and at is not None and len(node.args) > at:
                    reason = _literal(node.args[at])
                if reason is not None:
                    out.append(Raised(reason, code, where))
                elif keyword is None and name in defaults and name in codes and name != "ParapetError":
                    out.append(Raised(defaults[name], codes[name], where))  # no reason given: the default
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and node.value.elts:
                reason = _literal(node.value.elts[0])
                if reason is not None:
                    out.append(Raised(reason, None, where))
            elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and "REASON" in t.id for t in targets):
                    for value in node.value.values:
                        reason = _literal(value)
                        if reason is not None:
                            out.append(Raised(reason, None, where))
    return out


@dataclass(frozen=True)
class Documented:
    """One reason of the catalogue with the code of its row (``None``: not an error, as Authorize's)."""

    reason: str
    code: str | None
    row: str


def catalogue() -> list[Documented]:
    """The reasons of the "Reason catalogue" section's tables, with each row's gRPC code."""
    text = CONTRACTS_MD.read_text(encoding="utf-8")
    section = text.split("### Reason catalogue", 1)[1].split("\n## ", 1)[0]
    out: list[Documented] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or set(cells[0]) <= {"-"} or cells[0] in {"code", "service"}:
            continue
        # Kit table: | code | reason | when |; service table: | service | code | reasons | (services are
        # lower case). A code cell may go on after the code ("INVALID_ARGUMENT (per document in ...)"); "—"
        # marks reasons that are not errors (Authorize's answer).
        first = cells[0].split()[0]
        code_cell, reasons_cell = (cells[0], cells[1]) if first.isupper() else (cells[1], cells[2])
        word = code_cell.split()[0] if code_cell else ""
        code = word if word.isupper() and word.isidentifier() else None
        for reason in re.findall(r"`([A-Z][A-Z0-9_]+)`", reasons_cell):
            if REASON.match(reason) and not NOT_REASONS_IN_DOCS.match(reason):
                out.append(Documented(reason, code, line.strip()[:80]))
    return out
