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

``{{ photo | image }}`` (or ``image(detail="low")``) places the image a cell names at that
point of the prompt: the user message becomes a list of text and ``image_url`` parts, the
image parts holding the cell as it is (:class:`rowprompt.images.ImageInputs` makes it a URL).
An empty cell places nothing. Images go in the prompt only, never in the system message.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
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
IMAGE_FILTER = "image"
IMAGE_DETAILS = ("auto", "low", "high")
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


@dataclass
class _ImageSink:
    """The images one render of the prompt placed, and the nonce of their markers."""

    nonce: str
    refs: list[tuple[Any, str]] = field(default_factory=list)


# Set while the user prompt renders: the filter records its images here and prints a marker
# (a per-render nonce: a cell's text cannot forge one) that the render then splits on.
_IMAGE_SINK: ContextVar[_ImageSink | None] = ContextVar("rowprompt_image_sink", default=None)


def _image_filter(value: Any, detail: str = "auto") -> str:
    sink = _IMAGE_SINK.get()
    if sink is None:
        raise TemplateError("the image filter works in the prompt only, not the system message")
    if detail not in IMAGE_DETAILS:
        raise TemplateError(
            f"image(detail={detail!r}): detail is one of {', '.join(IMAGE_DETAILS)}"
        )
    if isinstance(value, str) and not value.strip():
        return ""  # an empty cell: no image for this row
    sink.refs.append((value, detail))
    return f"\x00{sink.nonce}{len(sink.refs) - 1}\x00"


_ENV = _environment()
_ENV.filters[IMAGE_FILTER] = _image_filter
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
        _ = self._image_uses

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

    @cached_property
    def _image_uses(self) -> tuple[list[str], bool]:
        """Columns the prompt shows with ``| image`` directly; whether any image is dynamic.

        Refuses the filter in the system message and a ``detail`` that is not known.
        """
        columns: list[str] = []
        dynamic = False
        for role, origin, ast, _ in self._compiled:
            for node in ast.find_all((nodes.Filter, nodes.FilterBlock)):
                found = node.filter if isinstance(node, nodes.FilterBlock) else node
                if not isinstance(found, nodes.Filter) or found.name != IMAGE_FILTER:
                    continue
                if role == "system":
                    raise TemplateError(
                        f"{origin}: images go in the prompt, not in the system message",
                        hint="Move {{ ... | image }} to the prompt.",
                    )
                _check_detail(found, origin)
                column = _column_reference(found.node, _referenced_columns(ast))
                if column is None:
                    dynamic = True
                elif column not in columns:
                    columns.append(column)
        return columns, dynamic

    @property
    def uses_images(self) -> bool:
        """Whether the prompt places images with the ``image`` filter."""
        columns, dynamic = self._image_uses
        return bool(columns) or dynamic

    def image_filter_columns(self) -> tuple[list[str], bool]:
        """Columns shown as ``{{ col | image }}``, and whether other image expressions exist."""
        columns, dynamic = self._image_uses
        return list(columns), dynamic

    def variables(self) -> set[str]:
        """The column names the templates refer to, found statically."""
        found: set[str] = set()
        for _, _, ast, _ in self._compiled:
            found |= _referenced_columns(ast)
        return found

    def check_columns(self, columns: Sequence[str], *, source: str) -> None:
        """Refuse a template naming a column that ``source`` lacks, before anything is sent;
        and one writing ``{{ none }}`` (Jinja's literal) for a column named ``none``."""
        existing = [str(c) for c in columns]
        known = set(existing)
        texts = {self.prompt_origin: self.prompt, self.system_origin: self.system or ""}
        for _, origin, ast, _ in self._compiled:
            for name in sorted(_referenced_columns(ast) - known):
                raise TemplateError(
                    f"{origin}: the template names column {name!r}, which {source} lacks",
                    hint=_missing_hint(name, existing),
                )
            for name in _literals_named_like(texts[origin], known):
                # Jinja reads the name as its constant: the prompt would silently lack the cell.
                raise TemplateError(
                    f"{origin}: {{{{ {name} }}}} is Jinja's constant {name}, not column"
                    f" {name!r} of {source}",
                    hint=f'Write {{{{ row["{name}"] }}}} for the column.',
                )

    def render(
        self, row: Mapping[str, Any], *, key: str | None = None, source: str | None = None
    ) -> list[dict[str, Any]]:
        """The chat messages for one row: an optional system message, then the user's.

        A user message that places images has a list of content parts (see the module doc).
        ``key`` (the row's label) and ``source`` (the table's file) name the row in errors:
        with ``source``, a render error reads ``FILE, row KEY, column 'C': ...``.
        """
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
        return self._render_jinja(row, key=key, source=source)

    def _render_jinja(
        self, row: Mapping[str, Any], *, key: str | None = None, source: str | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`render` through the compiled Jinja templates."""
        values = {str(k): template_value(v) for k, v in row.items()}
        context = {k: v for k, v in values.items() if k.isidentifier()}
        context[ROW_VARIABLE] = values
        where = f"row {key}" if key is not None else "a row"
        messages: list[dict[str, Any]] = []
        for role, origin, ast, template in self._compiled:
            sink = _ImageSink(secrets.token_hex(8)) if role == "user" and self.uses_images else None
            token = _IMAGE_SINK.set(sink)
            try:
                content: str | list[dict[str, Any]] = template.render(context)
            except TemplateError as exc:  # the image filter's: name the row
                place = f"{source}, {where}: {origin}" if source else f"{origin}: {where}"
                raise TemplateError(f"{place}: {exc.message}", hint=exc.hint) from exc
            except jinja2.UndefinedError as exc:
                match = _UNDEFINED_NAME.search(str(exc))
                name = next((g for g in match.groups() if g is not None), "") if match else ""
                message = (
                    f"{source}, {where}, column {name!r}: no such column, and the {origin}"
                    " template asks for it"
                    if source
                    else f"{origin}: {where} has no column {name!r} the template asks for"
                )
                raise TemplateError(message, hint=_missing_hint(name, list(values))) from exc
            except Exception as exc:  # a template bug shows on a row: name the row, not a trace
                failure = f"{type(exc).__name__}: {exc}"
                # Jinja does not say which expression failed: name the columns it reads.
                message = (
                    f"{source}, {where}{_columns_phrase(ast)}: the {origin} template failed:"
                    f" {failure}"
                    if source
                    else f"{origin}: rendering failed on {where}: {failure}"
                )
                raise TemplateError(message, hint="Fix the template expression.") from exc
            finally:
                _IMAGE_SINK.reset(token)
            if sink is not None and sink.refs:
                content = _content_parts(str(content), sink)
            messages.append({"role": role, "content": content})
        return messages

    def fingerprint(self) -> str:
        """A stable sha256 of the prompt and system templates: part of a job's identity."""
        text = json.dumps({"prompt": self.prompt, "system": self.system}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


_LITERAL_NAMES = frozenset({"none", "true", "false", "None", "True", "False"})


def _literals_named_like(text: str, columns: set[str]) -> list[str]:
    """Jinja constants (``none``, ``true``...) the template writes as bare names that are
    also column names; ``row.none`` is the column, and is not one of them."""
    found: list[str] = []
    after_dot = False
    for _, kind, value in _ENV.lex(text):
        if kind == "whitespace":
            continue
        if kind == "name" and value in _LITERAL_NAMES and value in columns and not after_dot:
            found.append(value)
        after_dot = kind == "operator" and value == "."
    return found


def _columns_phrase(ast: nodes.Template) -> str:
    """``, column 'a'`` or ``, columns 'a', 'b'``: what a template reads; "" for none."""
    names = sorted(_referenced_columns(ast))
    if not names:
        return ""
    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return f", column{'s' if len(names) > 1 else ''} {shown}"


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


def _column_reference(node: nodes.Node | None, columns: set[str]) -> str | None:
    """The column a filter's argument names directly (``photo``, ``row["a b"]``), or None."""
    if isinstance(node, nodes.Name) and node.name != ROW_VARIABLE and node.name in columns:
        return node.name
    if (
        isinstance(node, nodes.Getitem)
        and _is_row(node)
        and isinstance(node.arg, nodes.Const)
        and type(node.arg.value) is str
    ):
        return node.arg.value
    return None


def _check_detail(node: nodes.Filter, origin: str) -> None:
    """Refuse ``image(detail=...)`` with a constant detail that is not known, before sending."""
    given = [*node.args[:1], *(kw.value for kw in node.kwargs if kw.key == "detail")]
    for value in given:
        if isinstance(value, nodes.Const) and value.value not in IMAGE_DETAILS:
            raise TemplateError(
                f"{origin}: image(detail={value.value!r}): detail is one of"
                f" {', '.join(IMAGE_DETAILS)}"
            )


def _content_parts(text: str, sink: _ImageSink) -> list[dict[str, Any]]:
    """Rendered text with image markers as text and ``image_url`` content parts."""
    pieces = re.split(f"\x00{sink.nonce}(\\d+)\x00", text)
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            ref, detail = sink.refs[int(piece)]
            parts.append({"type": "image_url", "image_url": {"url": ref, "detail": detail}})
        elif piece:
            parts.append({"type": "text", "text": piece})
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
