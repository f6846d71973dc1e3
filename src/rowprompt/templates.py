"""Prompt templates: Jinja2 over a row's columns, rendered into chat messages.

A column whose name is an identifier is a variable (``{{ review }}``); every column is
reachable through ``row`` (``{{ row["review text"] }}``, ``{{ row.review }}``). ``row`` is
always the whole row: a column literally named ``row`` is ``{{ row["row"] }}``.

Cell values are data, never templates: they are passed to Jinja as values and never
compiled. Before rendering, missing cells (None, NaN, NaT, pd.NA) become ``""`` and whole
floats become ints (``5.0`` prints ``5``), so filters such as ``{{ x | upper }}`` see plain
values; on output lists and dicts print as JSON and dates in ISO form.

Templates run in Jinja's sandbox with ``StrictUndefined``: a name the row lacks is an error,
found statically by :meth:`PromptTemplate.check_columns` before anything is sent, and at
render time (for names built dynamically) as a :class:`TemplateError` naming the row.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from rowprompt.errors import TemplateError, UsageError
from rowprompt.tables import closest, display_text, is_missing, to_python

ROW_VARIABLE = "row"
_UNDEFINED_NAME = re.compile(r"^'([^']*)' is undefined|has no attribute '(.*)'$")


def _finalize(value: Any) -> Any:
    """What ``{{ expression }}`` prints: strings as they are, everything else as display text."""
    if type(value) is str:
        return value
    return display_text(value)


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )


_ENV = _environment()
_GLOBALS = frozenset(_ENV.globals)
# row.items, row.get ... are the mapping's methods, not columns.
_MAPPING_ATTRIBUTES = frozenset(dir(dict))


def template_value(value: Any) -> Any:
    """A cell as a template sees it: missing as ``""``, ``5.0`` as ``5``, numpy unwrapped."""
    if type(value) is str:
        return value
    if is_missing(value):
        return ""
    value = to_python(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


@dataclass(frozen=True)
class PromptTemplate:
    """A user prompt template and an optional system template.

    ``prompt_origin`` and ``system_origin`` say where each came from (an option or a file)
    for messages; they are not part of the template's identity.
    """

    prompt: str
    system: str | None = None
    prompt_origin: str = field(default="--prompt", compare=False)
    system_origin: str = field(default="--system", compare=False)

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise TemplateError(
                f"{self.prompt_origin}: the prompt is empty", hint="Write the prompt to send."
            )
        _ = self._compiled  # refuse a syntax error now, before anything is read or sent

    @classmethod
    def from_options(
        cls,
        prompt: str | None = None,
        prompt_file: str | Path | None = None,
        system: str | None = None,
        system_file: str | Path | None = None,
    ) -> PromptTemplate:
        """Build from command-line style options: exactly one of prompt / prompt_file."""
        if (prompt is None) == (prompt_file is None):
            raise UsageError(
                "give the prompt with --prompt TEXT or --prompt-file FILE"
                if prompt is None
                else "--prompt and --prompt-file were both given",
                hint="Use exactly one of --prompt and --prompt-file.",
            )
        if system is not None and system_file is not None:
            raise UsageError(
                "--system and --system-file were both given",
                hint="Use at most one of --system and --system-file.",
            )
        prompt_origin, system_origin = "--prompt", "--system"
        if prompt_file is not None:
            prompt, prompt_origin = _read_template_file(prompt_file), str(prompt_file)
        if system_file is not None:
            system, system_origin = _read_template_file(system_file), str(system_file)
        assert prompt is not None
        return cls(prompt, system or None, prompt_origin, system_origin)

    @cached_property
    def _compiled(self) -> list[tuple[str, str, nodes.Template, jinja2.Template]]:
        """(role, origin, AST, compiled template) for the system (if any) then the prompt."""
        parts = [("user", self.prompt_origin, self.prompt)]
        if self.system is not None:
            parts.insert(0, ("system", self.system_origin, self.system))
        compiled = []
        for role, origin, text in parts:
            try:
                ast = _ENV.parse(text)
                template = _ENV.from_string(ast)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"{origin}: template syntax error on line {exc.lineno}: {exc.message}",
                    hint='Fix the template; write {{ column }} or {{ row["a column"] }}.',
                ) from exc
            compiled.append((role, origin, ast, template))
        return compiled

    @cached_property
    def _fast(self) -> list[tuple[str, list[str | tuple[str]]]] | None:
        """Each template as literal text and column references, or None when any is more.

        A template that is only text, ``{{ column }}`` and ``{{ row["column"] }}`` renders
        without Jinja: each reference prints ``str(_finalize(template_value(cell)))``, which
        is exactly what the compiled template prints for it.
        """
        plans = []
        for role, _, ast, _ in self._compiled:
            parts = _fast_parts(ast)
            if parts is None:
                return None
            plans.append((role, parts))
        return plans

    def variables(self) -> set[str]:
        """The column names the templates refer to, found statically."""
        found: set[str] = set()
        for _, _, ast, _ in self._compiled:
            found |= _referenced_columns(ast)
        return found

    def check_columns(self, columns: Sequence[str], *, source: str) -> None:
        """Refuse a template naming a column that ``source`` lacks, before anything is sent."""
        existing = [str(c) for c in columns]
        known = set(existing)
        for _, origin, ast, _ in self._compiled:
            for name in sorted(_referenced_columns(ast) - known):
                raise TemplateError(
                    f"{origin}: the template names column {name!r}, which {source} lacks",
                    hint=_missing_hint(name, existing),
                )

    def render(self, row: Mapping[str, Any], *, key: str | None = None) -> list[dict[str, str]]:
        """The chat messages for one row: an optional system message, then the user's."""
        fast = self._fast
        if fast is not None:
            try:
                return [
                    {
                        "role": role,
                        "content": "".join(
                            [
                                part
                                if type(part) is str
                                else str(_finalize(template_value(row[part[0]])))
                                for part in parts
                            ]
                        ),
                    }
                    for role, parts in fast
                ]
            except Exception:  # a missing column or an odd value: Jinja says why
                pass
        return self._render_jinja(row, key=key)

    def _render_jinja(
        self, row: Mapping[str, Any], *, key: str | None = None
    ) -> list[dict[str, str]]:
        """:meth:`render` through the compiled Jinja templates."""
        values = {str(k): template_value(v) for k, v in row.items()}
        context = {k: v for k, v in values.items() if k.isidentifier()}
        context[ROW_VARIABLE] = values
        messages = []
        for role, origin, _, template in self._compiled:
            try:
                content = template.render(context)
            except jinja2.UndefinedError as exc:
                match = _UNDEFINED_NAME.search(str(exc))
                name = next((g for g in match.groups() if g is not None), "") if match else ""
                where = f"row {key}" if key is not None else "a row"
                raise TemplateError(
                    f"{origin}: {where} has no column {name!r} the template asks for",
                    hint=_missing_hint(name, list(values)),
                ) from exc
            except Exception as exc:  # a template bug shows on a row: name the row, not a trace
                where = f"row {key}" if key is not None else "a row"
                raise TemplateError(
                    f"{origin}: rendering failed on {where}: {type(exc).__name__}: {exc}",
                    hint="Fix the template expression.",
                ) from exc
            messages.append({"role": role, "content": content})
        return messages

    def fingerprint(self) -> str:
        """A stable sha256 of the prompt and system templates: part of a job's identity."""
        text = json.dumps({"prompt": self.prompt, "system": self.system}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _referenced_columns(ast: nodes.Template) -> set[str]:
    undeclared = meta.find_undeclared_variables(ast)
    found = undeclared - _GLOBALS - {ROW_VARIABLE}
    if ROW_VARIABLE not in undeclared:
        return found  # ``row`` is never read, or is a local the template set itself
    for node in ast.find_all((nodes.Getitem, nodes.Getattr)):
        if not _is_row(node):
            continue
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found.add(node.arg.value)
        elif isinstance(node, nodes.Getattr) and node.attr not in _MAPPING_ATTRIBUTES:
            found.add(node.attr)
    return found


def _fast_parts(ast: nodes.Template) -> list[str | tuple[str]] | None:
    """The template as literal text and ``(column,)`` references, or None if it is more."""
    parts: list[str | tuple[str]] = []
    for output in ast.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append(node.data)
            elif isinstance(node, nodes.Name) and node.ctx == "load" and node.name != ROW_VARIABLE:
                parts.append((node.name,))
            elif (
                isinstance(node, nodes.Getitem)
                and node.ctx == "load"
                and _is_row(node)
                and isinstance(node.arg, nodes.Const)
                and type(node.arg.value) is str
            ):
                parts.append((node.arg.value,))
            else:
                return None
    return parts


def _is_row(node: nodes.Node) -> bool:
    target = getattr(node, "node", None)
    return isinstance(target, nodes.Name) and target.name == ROW_VARIABLE


def _missing_hint(name: str, existing: list[str]) -> str:
    match = closest(name, existing)
    suggestion = ""
    if match is not None:
        use = f"{{{{ {match} }}}}" if match.isidentifier() else f"{{{{ row[{match!r}] }}}}"
        suggestion = f"Did you mean {match!r} ({use})? "
    shown = ", ".join(map(repr, existing[:30])) + (", ..." if len(existing) > 30 else "")
    return f"{suggestion}The columns are: {shown or '(none)'}."


def _read_template_file(path: str | Path) -> str:
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError as exc:
        raise TemplateError(f"{path}: no such template file", hint="Check the path.") from exc
    except IsADirectoryError as exc:
        raise TemplateError(f"{path}: is a directory, not a template file") from exc
    except PermissionError as exc:
        raise TemplateError(
            f"{path}: permission denied", hint="Make the file readable for this user."
        ) from exc
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TemplateError(
            f"{path}: not valid UTF-8 at byte {exc.start} (line {line})",
            hint="Re-save the template file as UTF-8.",
        ) from exc
