import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import kernelalg


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    # Material prints a banner about its successor on every build; it is not ours to fix.
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,  # snippets and mkdocstrings resolve paths from the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "api" / "layers" / "index.html").is_file()


def _documented_objects() -> list[object]:
    objects = []
    for page in DOCS.rglob("*.md"):
        for path in re.findall(r"^::: (kernelalg[\w.]*)", page.read_text(), flags=re.MULTILINE):
            obj = kernelalg
            for part in path.split(".")[1:]:
                obj = getattr(obj, part)
            objects.append(obj)
    return objects


@pytest.mark.parametrize("module", [kernelalg, kernelalg.layers, kernelalg.ops], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_api_pages(module):
    # The API pages list objects one by one (see docs/design.md, "Documentation"), so
    # a new public name must be added to them by hand: this is the reminder.
    documented = _documented_objects()
    missing = [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and not any(obj is d for d in documented)
    ]
    assert not missing, (
        f"public names of `{module.__name__}` missing from docs/api/*.md: {missing}. "
        f"Add a `::: {module.__name__}.NAME` line to the matching page."
    )


def _shell_blocks(markdown: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL)]


def test_quick_start_is_the_same_in_readme_and_docs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = _shell_blocks(section)
    # .ci/run executes the second command verbatim, so it must stay exactly this.
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[examples]" '
        "&& .venv/bin/python examples/digits.py",
        'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest',
    ]
    assert _shell_blocks((DOCS / "index.md").read_text())[:2] == commands
