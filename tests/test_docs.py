"""The documentation site stays in step with the code: every module has its API reference page, every page is in the
navigation, the top-level names are listed where they are defined, and the guides' sections that docstrings cite
exist. (CI also runs ``mkdocs build --strict``, which renders every docstring; these checks need no docs tools.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "t3d_trl"
#: packages whose ``__init__`` has a page of its own (the others only re-export their modules)
PACKAGE_PAGES = ("t3d_trl", "t3d_trl.rollout")


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        names.append(".".join(parts))
    return names


def _slug(title: str) -> str:
    """mkdocs' heading anchor for plain-ASCII titles."""
    text = re.sub(r"[^\w\s-]", "", title.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    return {_slug(title) for title in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


NAV = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])


@pytest.mark.parametrize("module", [*_modules(), *PACKAGE_PAGES])
def test_every_module_has_a_reference_page_in_the_navigation(module):
    page = DOCS / "reference" / f"{module}.md"
    assert page.is_file(), f"add {page.relative_to(ROOT)} with `::: {module}` and list it in mkdocs.yml's nav"
    assert f"::: {module}\n" in page.read_text(encoding="utf-8")
    assert f"reference/{module}.md" in NAV, f"list reference/{module}.md in mkdocs.yml's nav"


def test_the_navigation_lists_every_page_and_only_pages_that_exist():
    missing = [page for page in NAV if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist: {missing}"
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md") if "_ext" not in path.parts)
    omitted = [page for page in pages if page not in NAV]
    assert not omitted, f"add these pages to mkdocs.yml's nav: {omitted}"


def test_top_level_names_are_listed_where_they_are_defined():
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    exports = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS"
    )
    table = (DOCS / "reference" / "t3d_trl.md").read_text(encoding="utf-8")
    for name in exports:
        found = re.search(rf"\[`{name}`\]\[(?P<path>[\w.]+)\.{name}\]", table)
        assert found, f"docs/reference/t3d_trl.md does not list {name}"
        source = ROOT / (found["path"].replace(".", "/") + ".py")
        defined = {getattr(node, "name", None) for node in ast.parse(source.read_text(encoding="utf-8")).body}
        assert name in defined, f"docs/reference/t3d_trl.md links {name} to {found['path']}, which does not define it"


def test_docstrings_cite_guide_sections_that_exist():
    pattern = re.compile(r'``docs/(?P<page>[\w-]+)\.md``(?:,\s*|\s*\(\s*)"(?P<section>[^"]+)"')
    for path in sorted(PACKAGE.rglob("*.py")):
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            page = DOCS / f"{match['page']}.md"
            where = f"{path.relative_to(ROOT)} cites docs/{match['page']}.md"
            assert page.is_file(), f"{where}, which does not exist"
            section = " ".join(match["section"].split())
            assert _slug(section) in _anchors(page), f'{where}, which has no section "{section}"'


def test_nothing_cites_the_background_notes():
    needle = re.compile("DESIGN" + r"(\.md| §)")
    for folder in ("t3d_trl", "tests", "examples", "benchmarks", "docs"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".txt"):
                assert not needle.search(path.read_text(encoding="utf-8")), (
                    f"{path.relative_to(ROOT)} cites the background notes; point to docs/design.md instead"
                )


def config_table() -> str:
    """docs/training.md's table of T3DConfig: its own fields and the TrainingArguments defaults it changes, from the
    dataclass fields' metadata and defaults."""
    import dataclasses

    from transformers import TrainingArguments

    from t3d_trl import T3DConfig

    inherited = {spec.name: spec for spec in dataclasses.fields(TrainingArguments)}
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for spec in dataclasses.fields(T3DConfig):
        if not spec.init or (spec.name in inherited and inherited[spec.name].default == spec.default):
            continue
        default = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
        meaning = " ".join(spec.metadata.get("help", "").split()).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{default!r}` | {meaning} |")
    return "\n".join(rows)


def test_the_training_guide_lists_every_config_field_as_the_dataclass_has_it():
    text = (DOCS / "training.md").read_text(encoding="utf-8")
    assert config_table() in text, "regenerate docs/training.md's table with tests/test_docs.py's config_table()"
