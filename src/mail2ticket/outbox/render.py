"""Outbox rendering: Jinja2 templates for acknowledgements and status mails, sandboxed and strict.

Templates come from files only (the shipped `templates/` and an admin override directory, per queue
first); mail content is only ever passed in as data, never compiled as template source. A missing
variable is an error (StrictUndefined), so a broken template fails in `check-config`, not at night.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

SHIPPED_TEMPLATES = Path(str(files("mail2ticket") / "templates"))
MIN_JINJA = (3, 1, 6)


_Templates = tuple[jinja2.Template, jinja2.Template, "jinja2.Template | None"]


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def check_jinja_version() -> None:
    parts = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if parts < MIN_JINJA:
        raise RuntimeError(f"Jinja2 {jinja2.__version__} has known sandbox escapes; install Jinja2 >= 3.1.6")


class Renderer:
    def __init__(self, templates_dir: Path | None = None, override_dir: Path | None = None) -> None:
        check_jinja_version()
        self._base = templates_dir or SHIPPED_TEMPLATES
        self._override = override_dir
        self._envs: dict[str, ImmutableSandboxedEnvironment] = {}
        # (queue, name, language) -> its subject, text and HTML templates; a lookup that finds no HTML
        # template searches every directory, so the answer is kept (templates change with a new Renderer).
        self._chosen: dict[tuple[str | None, str, str], _Templates] = {}

    def _env(self, queue: str | None) -> ImmutableSandboxedEnvironment:
        key = queue or ""
        env = self._envs.get(key)
        if env is None:
            search: list[Path] = []
            if self._override is not None:
                if queue:
                    search.append(self._override / queue)
                search.append(self._override)
            search.append(self._base)
            env = ImmutableSandboxedEnvironment(
                loader=jinja2.FileSystemLoader([str(p) for p in search]),
                undefined=jinja2.StrictUndefined,
                autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
                keep_trailing_newline=False,
                trim_blocks=True,
                lstrip_blocks=True,
                auto_reload=False,  # templates change on SIGHUP (a new Renderer), not by a stat() per mail
            )
            self._envs[key] = env
        return env

    def exists(self, name: str, language: str, queue: str | None = None) -> bool:
        try:
            self._env(queue).get_template(f"{language}/{name}.txt.j2")
        except jinja2.TemplateNotFound:
            return False
        return True

    def render(self, name: str, language: str, context: dict[str, Any], queue: str | None = None) -> Rendered:
        subject, text, html = self._templates(name, language, queue)
        return Rendered(subject=" ".join(subject.render(context).split()), text=text.render(context).rstrip() + "\n",
                        html=html.render(context) if html is not None else None)

    def _templates(self, name: str, language: str, queue: str | None) -> _Templates:
        key = (queue, name, language)
        chosen = self._chosen.get(key)
        if chosen is None:
            env = self._env(queue)
            lang = language if self.exists(name, language, queue) else "de"
            try:
                html: jinja2.Template | None = env.get_template(f"{lang}/{name}.html.j2")
            except jinja2.TemplateNotFound:
                html = None
            chosen = self._chosen[key] = (env.get_template(f"{lang}/{name}.subject.j2"),
                                          env.get_template(f"{lang}/{name}.txt.j2"), html)
        return chosen

    def template_names(self) -> list[tuple[str, str]]:
        """(language, name) of every text template visible to this renderer."""
        found: set[tuple[str, str]] = set()
        for root in [p for p in (self._override, self._base) if p is not None]:
            for path in root.glob("*/*.txt.j2"):
                found.add((path.parent.name, path.name.removesuffix(".txt.j2")))
        return sorted(found)
