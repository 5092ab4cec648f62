"""Versioned prompt templates from ``prompts/<name>/<semver>/template.toml``, rendered into a provider prompt.

The rendered prompt keeps three things apart: the template's system text (variables substituted, nothing from
the conversation), retrieved context in a message of its own (a user-role message opened by the template's
header, so a document cannot pose as instructions), and the caller's conversation.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from parapet.kit.errors import InvalidArgument, NotFound
from services.inference.providers.base import PromptMessage

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
MAX_VARIABLE_CHARS = 256


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str
    context_header: str
    variables: tuple[str, ...] = ()
    defaults: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContextDocument:
    document_id: str
    title: str
    source_uri: str
    text: str


@dataclass(frozen=True)
class RenderedPrompt:
    template: Template
    system: str
    messages: tuple[PromptMessage, ...]  # the context message (if any) first, then the conversation


def _semver(version: str) -> tuple[int, int, int] | None:
    match = _SEMVER.match(version)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


class PromptLibrary:
    """Every template under a directory, loaded once at start (templates are immutable)."""

    def __init__(self, root: Path) -> None:
        self._templates: dict[tuple[str, str], Template] = {}
        self._newest: dict[str, str] = {}
        for file in sorted(root.glob("*/*/template.toml")):
            version_dir = file.parent
            version, name = version_dir.name, version_dir.parent.name
            if _semver(version) is None:
                continue
            data = tomllib.loads(file.read_text())
            self._templates[(name, version)] = Template(
                name=name,
                version=version,
                system=str(data.get("system", "")),
                context_header=str(data.get("context_header", "Context:")),
                variables=tuple(data.get("variables", ())),
                defaults={k: str(v) for k, v in dict(data.get("defaults", {})).items()},
            )
            newest = self._newest.get(name)
            if newest is None or _semver(version) > _semver(newest):  # type: ignore[operator]
                self._newest[name] = version

    def names(self) -> list[str]:
        return sorted(self._newest)

    def get(self, name: str, version: str = "") -> Template:
        resolved = version or self._newest.get(name, "")
        template = self._templates.get((name, resolved))
        if template is None:
            raise NotFound(
                f"prompt template {name!r} version {version or 'newest'!r} does not exist",
                reason="PROMPT_TEMPLATE_NOT_FOUND",
                metadata={"template": name, "version": version},
            )
        return template

    def render(
        self,
        template: Template,
        variables: dict[str, str],
        context: list[ContextDocument],
        conversation: list[PromptMessage],
    ) -> RenderedPrompt:
        values = {**template.defaults, **variables}
        violations = [
            (f"template_variables[{name}]", "required by the template")
            for name in template.variables
            if name not in values
        ]
        violations += [
            (f"template_variables[{name}]", f"at most {MAX_VARIABLE_CHARS} characters, one line")
            for name, value in variables.items()
            if len(value) > MAX_VARIABLE_CHARS or "\n" in value
        ]
        if violations:
            raise InvalidArgument("template variables are missing or invalid", field_violations=violations)
        system = string.Template(template.system).safe_substitute(values)
        messages = list(conversation)
        if context:
            blocks = [template.context_header]
            for number, doc in enumerate(context, 1):
                source = f" ({doc.source_uri})" if doc.source_uri else ""
                blocks.append(f"[{number}] {doc.title or doc.document_id}{source}\n{doc.text}")
            messages.insert(0, PromptMessage("user", "\n\n".join(blocks)))
        return RenderedPrompt(template, system, tuple(messages))
