"""The README and docs/ pages say what the code does: links resolve, every pipeline key is
documented, every command shown parses with today's flags, and the list-making line works."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from introspect import cli, config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for every `introspect ...` line inside a fenced block."""
    out = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.splitlines():
                if line.strip().startswith("introspect "):
                    out.append((page.name, line.strip()))
    return out


def test_the_readme_is_short_and_points_at_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 10_000
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_every_pipeline_key_is_documented():
    keys = (ROOT / "docs" / "pipelines.md").read_text()
    missing = [f"{s}.{k}" for s, d in config.DEFAULTS.items() for k in d if f"`{s}.{k}`" not in keys]
    assert not missing, f"docs/pipelines.md lacks {missing}"


def test_every_command_shown_parses():
    commands = _commands()
    assert any(c.startswith("introspect extract") for _, c in commands)
    ap = cli.parser()
    for page, line in commands:
        argv = shlex.split(line, comments=True)[1:]
        try:
            ap.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page}: `{line}` does not parse")


def test_the_two_commands_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"\nmake {target}   #" in readme
        assert re.search(rf"^{target}:", makefile, re.M)


@pytest.mark.skipif(shutil.which("find") is None, reason="needs find and sed")
def test_the_readme_list_line_finds_every_image_relative_to_its_root(tmp_path):
    """The README's find: .jpg, .JPEG and .png at any depth, names with spaces, paths that
    `--root photos` does not double."""
    line = next(x for x in (ROOT / "README.md").read_text().splitlines() if "find . " in x)
    photos = tmp_path / "photos"
    for name in ("a.jpg", "sub/b c.JPEG", "sub/deeper/d.png", "notes.txt"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    subprocess.run(["bash", "-c", line], cwd=tmp_path, check=True)
    listed = (tmp_path / "photos.txt").read_text().splitlines()
    assert sorted(listed) == ["a.jpg", "sub/b c.JPEG", "sub/deeper/d.png"]
    assert all((photos / p).is_file() for p in listed)
