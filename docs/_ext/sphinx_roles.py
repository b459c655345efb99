"""A griffe extension for the API reference (mkdocs.yml): t3d-trl's reStructuredText habits rendered as Markdown.

The docstrings follow the Google style (``Args:`` / ``Returns:`` / ``Raises:``) but keep a few reStructuredText
constructs that Markdown does not know. Before mkdocstrings renders a docstring, this extension rewrites:

* Sphinx roles (``:class:`~t3d_trl.X```, ``:func:`register_family```, ``:meth:`ModelFamily.matches```...) into
  autorefs cross-references: the name is resolved in the scope of the documented object (its module's imports
  included) and linked when the API reference documents it, otherwise shown as code (``optional`` references raise
  no warning); a leading ``~`` shows only the last component, as in Sphinx;
* simple tables (``=====  =====`` borders) into Markdown tables;
* ``text::`` before a literal block into ``text:``, and ```text <url>`_`` links into Markdown links;
* a first paragraph wrapped over several lines into one line (mkdocstrings' summaries show the first line);
* references to the guides (````docs/design.md`` ("Importing t3d-trl")``, ````docs/rollouts.md``, "Resuming"``,
  ````docs/cli.md`` (``t3d-trl eval``)``, ````docs/generation.md````) into links to those pages and sections;

and gives attributes documented by ``#:`` comments (Sphinx's convention) those comments as docstrings.

Only the rendered documentation changes; the source docstrings stay as they are.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|data|mod|exc|obj|const):`(?P<target>[^`]+)`")
_LINK = re.compile(r"`(?P<text>[^`<]+?)\s*<(?P<url>https?://[^>]+)>`_")
_BORDER = re.compile(r"^(?P<indent>\s*)=+(\s+=+)*\s*$")
_LITERAL = re.compile(r"(?P<text>\S)::$")
_GUIDE = re.compile(
    r"``docs/(?P<page>[\w-]+)\.md``"
    r"(?:(?P<comma>,\s*\"(?P<quoted>[^\"]+)\")|(?P<paren>\s*\(\s*(?:\"(?P<psection>[^\"]+)\"|``(?P<code>[^`]+)``)\s*\)))?"
)
#: from a reference page (``reference/<module>/`` with mkdocs' directory URLs) to the site's root
_SITE_ROOT = "../../"
_DOCS = Path(__file__).resolve().parent.parent


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj`` (``target`` itself when it cannot be resolved)."""
    if target.startswith("t3d_trl") or "." in target and not target.split(".")[0][:1].isupper():
        head, rest = target, ""
    else:
        head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj if obj.is_class or obj.is_module else obj.parent
    path = None
    while scope is not None and path is None:
        if head in scope.members:
            path = f"{scope.path}.{head}"
        else:
            try:
                path = scope.resolve(head)
            except (griffe.NameResolutionError, AttributeError, KeyError):
                scope = scope.parent
    path = path or head
    return f"{path}.{rest}" if rest else path


def _canonical(obj: griffe.Object, path: str) -> str:
    """Follow aliases (re-exports, lazy exports) to the object's own path, where the reference documents it."""
    try:
        target = obj.modules_collection.get_member(path)
        return target.canonical_path
    except Exception:  # an outside name (transformers, torch...) or a name griffe cannot follow
        return path


def _role(obj: griffe.Object, match: re.Match) -> str:
    target = match["target"].strip()
    short = target.startswith("~")
    target = target.lstrip("~").removesuffix("()")
    title = target.rsplit(".", 1)[-1] if short else target
    if match["role"] in ("func", "meth"):
        title += "()"
    identifier = _canonical(obj, _resolve(obj, target))
    return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(title)}</code></autoref>'


def _slug(title: str) -> str:
    """The anchor mkdocs gives a heading (Python-Markdown's ``toc`` slugify)."""
    from markdown.extensions.toc import slugify

    return slugify(" ".join(title.split()), "-")


@functools.cache
def _anchors(page: str) -> frozenset[str] | None:
    """The heading anchors of ``docs/<page>.md`` (``None`` when there is no such page)."""
    path = _DOCS / f"{page}.md"
    if not path.is_file():
        return None
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    return frozenset(
        _slug(title.replace("`", "")) for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE)
    )


def _guide_link(obj: griffe.Object, match: re.Match) -> str:
    page = match["page"]
    section = match["quoted"] or match["psection"] or match["code"]
    anchors = _anchors(page)
    if anchors is None:
        griffe.logger.warning(f"{obj.path}: the docstring refers to docs/{page}.md, which does not exist")
    elif section and _slug(section) not in anchors:
        if not match["code"]:  # a quoted title names a section; a code span may just be an example
            griffe.logger.warning(f'{obj.path}: docs/{page}.md has no section "{" ".join(section.split())}"')
        section = None
    url = f"{_SITE_ROOT}{page}/" + (f"#{_slug(section)}" if section else "")
    text = re.sub(r"``([^`]+)``", r"<code>\1</code>", html.escape(match.group(0)))
    return f'<a href="{url}">{text}</a>'


def _spans(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    """A row's cells: split at runs of two or more spaces when that gives one cell per column (text may overflow its
    column, as reStructuredText allows), else at the columns' start positions."""
    words = re.split(r"\s{2,}", line.strip())
    if line[: spans[0][1]].strip() and len(words) == len(spans):
        return words
    cells = []
    for index, (start, _) in enumerate(spans):
        end = spans[index + 1][0] if index + 1 < len(spans) else len(line)
        cells.append(line[start:end].strip())
    return cells


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _tables(text: str) -> str:
    """reStructuredText simple tables (border, optional header and border, rows, border) as Markdown tables."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not _BORDER.match(line) or "=" not in line:
            out.append(line)
            index += 1
            continue
        borders = [index]
        end = index + 1
        while end < len(lines) and lines[end].strip() and len(borders) < 3:
            if _BORDER.match(lines[end]):
                borders.append(end)
            end += 1
        if len(borders) < 2:
            out.append(line)
            index += 1
            continue
        spans, indent = _spans(line), _BORDER.match(line)["indent"]
        rows: list[list[str]] = []
        for row_line in lines[index + 1 : borders[-1]]:
            if _BORDER.match(row_line):
                rows.append([])  # header separator
                continue
            cells = _cells(row_line, spans)
            if rows and rows[-1] and not cells[0]:  # a continuation line of the previous row
                rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
            else:
                rows.append(cells)
        if [] in rows:
            split = rows.index([])
            header, body = rows[:split], rows[split + 1 :]
            header = header[0] if header else [""] * len(spans)
        else:
            header, body = [""] * len(spans), rows
        out.append(indent + _markdown_row(header))
        out.append(indent + "| " + " | ".join("---" for _ in spans) + " |")
        out.extend(indent + _markdown_row(row) for row in body)
        index = borders[-1] + 1
    return "\n".join(out)


def _literal_markers(text: str) -> str:
    """``text::`` followed by a blank line (a reStructuredText literal block) becomes ``text:``."""
    lines = text.split("\n")
    for index, line in enumerate(lines[:-1]):
        if lines[index + 1].strip() == "" and line.rstrip().endswith("::"):
            stripped = line.rstrip()
            lines[index] = stripped[:-2].rstrip() if stripped.strip() == "::" else _LITERAL.sub(r"\g<text>:", stripped)
    return "\n".join(lines)


def _one_line_summary(text: str) -> str:
    """The first paragraph on one line: mkdocstrings' summary tables show a docstring's first line, and the code's
    summaries often wrap (Markdown renders the paragraph the same either way)."""
    first, blank, rest = text.partition("\n\n")
    lines = first.split("\n")
    plain = all(line and not line[0].isspace() and not re.match(r"([*+|>-]|\d+\.|```|\w+:$)", line) for line in lines)
    return " ".join(lines) + blank + rest if plain and len(lines) > 1 else text


def _convert(obj: griffe.Object, text: str) -> str:
    parts = re.split(r"(```.*?```)", text, flags=re.DOTALL)  # leave fenced code alone
    for index in range(0, len(parts), 2):
        part = _tables(parts[index])  # first: the columns are found at their positions in the source
        part = _GUIDE.sub(lambda match: _guide_link(obj, match), part)
        part = _ROLE.sub(lambda match: _role(obj, match), part)
        part = _LINK.sub(r"[\g<text>](\g<url>)", part)
        parts[index] = _literal_markers(part)
    return _one_line_summary("".join(parts))


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    """The ``#:`` comment lines right above an attribute, as its docstring."""
    try:
        lines = obj.lines_collection[obj.filepath]
    except (KeyError, TypeError, AttributeError):
        return None
    comments: list[str] = []
    index = (obj.lineno or 0) - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        comments.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    if not comments:
        return None
    return griffe.Docstring("\n".join(comments), lineno=index + 2, parent=obj)


class SphinxRoles(griffe.Extension):
    """Rewrite the reStructuredText constructs of every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.is_attribute and obj.docstring is None:
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
