"""The documentation holds together: every relative link and #anchor of the README, docs/ and
ARCHITECTURE.md resolves (GitHub's heading slugs), every option of every command's --help is
described in its section of docs/commands.md, every configuration key is in the keys table,
the README stays a short page for the operator, and the two commands under its quick start's
"From a clone" heading are exactly what `.ci/run` runs."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from trackssl_agent.cli.table import COMMANDS
from trackssl_agent.config import settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CHECKED = [README, ROOT / "ARCHITECTURE.md", *sorted(DOCS.glob("*.md"))]
"""The pages whose links must resolve."""

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text without markup, lower-case, punctuation
    dropped (letters, digits, '_', '-' and spaces kept), each space a '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a Markdown page; a repeated heading gets -1, -2 ..."""
    seen: dict[str, int] = {}
    found = set()
    for _number, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path) -> list[str]:
    """Each relative link or #anchor of ``page`` that does not resolve, as ``page:line: link``."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for number, line in prose_lines(text):
        for link in LINK.findall(INLINE_CODE.sub("``", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...
                continue
            path_part, _, anchor = link.partition("#")
            target = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(root)}:{number}: {link}"
            if not target.exists() or root not in (target, *target.parents):
                broken.append(f"{where} (no such file)")
            elif (
                anchor
                and target.suffix == ".md"
                and anchor not in anchors(target.read_text(encoding="utf-8"))
            ):
                broken.append(f"{where} (no such heading)")
    return broken


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level
    or above."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [
        match.start()
        for match in re.finditer(r"^(#{1,6}) ", text[start:], re.MULTILINE)
        if len(match.group(1)) <= level and not _in_fence(text[start:], match.start())
    ]
    return text[start : start + ends[0]] if ends else text[start:]


def _in_fence(text: str, position: int) -> bool:
    return sum(1 for line in text[:position].splitlines() if FENCE.match(line.strip())) % 2 == 1


# --- links and anchors -----------------------------------------------------------------------


def test_every_link_and_anchor_resolves() -> None:
    """Every relative link of README.md, ARCHITECTURE.md and docs/*.md names a file of the
    repository, and every #anchor a heading of its page."""
    assert len(CHECKED) >= 10, CHECKED
    broken = [entry for page in CHECKED for entry in broken_links(page, ROOT)]
    assert broken == []


def test_the_checker_reports_broken_links(tmp_path: Path) -> None:
    """A missing file, a missing heading, a link out of the repository and a heading that
    exists only inside a code block are each reported; code spans and web links are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Two words, and more: `x`\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n## Top\n\n```sh\n# not a heading\n```\n"
        "[ok](docs/other.md#two-words-and-more-x) [ok](#top-1) [ok](#top) [web](https://x.y/#z)\n"
        "`[code](nowhere.md)`\n"
        "[a](docs/missing.md) [b](docs/other.md#three) [c](../outside.md) [d](#not-a-heading)\n"
    )
    (tmp_path.parent / "outside.md").touch()
    assert broken_links(page, tmp_path) == [
        "README.md:10: docs/missing.md (no such file)",
        "README.md:10: docs/other.md#three (no such heading)",
        "README.md:10: ../outside.md (no such file)",
        "README.md:10: #not-a-heading (no such heading)",
    ]


def test_slugs_follow_github() -> None:
    """Headings become GitHub's anchors: lower-case, punctuation and code marks dropped,
    spaces to '-', '-' and '_' kept."""
    assert slug("Running the agent: `run`") == "running-the-agent-run"
    assert slug("--version") == "--version"
    assert slug("Dependencies, and why") == "dependencies-and-why"
    assert slug("The package: Debian, RHEL family") == "the-package-debian-rhel-family"
    assert slug("TRACKSSL_ALLOW and [links](x.md)") == "trackssl_allow-and-links"


def test_readme_links_every_docs_page() -> None:
    """Every page under docs/ is linked from the README's Documentation table."""
    table = section(README.read_text(), "## Documentation")
    for page in sorted(DOCS.glob("*.md")):
        assert f"(docs/{page.name})" in table, page.name


# --- options and keys ------------------------------------------------------------------------

SHARED = "## Options of probe and check-once"


def command(name: str) -> click.Command:
    """The click command ``name`` of the group."""
    entry = COMMANDS[name]
    found = getattr(importlib.import_module(entry.module), entry.attribute)
    assert isinstance(found, click.Command)
    return found


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_documented_in_its_commands_section(name: str) -> None:
    """Each option of each command (all its spellings but -h/--help) appears in that
    command's section of docs/commands.md (probe and check-once: or in their shared options)."""
    text = (DOCS / "commands.md").read_text()
    documented = section(text, f"## {name}")
    if name in {"probe", "check-once"}:
        documented += section(text, SHARED)
    options = [
        spelling
        for param in command(name).params
        if isinstance(param, click.Option)
        for spelling in (*param.opts, *param.secondary_opts)
        if spelling not in {"-h", "--help"}
    ]
    assert options
    missing = [
        option
        for option in options
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", documented)
    ]
    assert missing == [], f"{name}: {missing}"


def test_version_options_are_documented() -> None:
    """The group's own options, --version and --version --verbose (-v), are documented."""
    documented = section((DOCS / "commands.md").read_text(), "## --version")
    for option in ("--version", "--verbose", "-v", "-h"):
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", documented), option


def test_every_key_is_in_the_keys_table() -> None:
    """Every configuration key (and its alias, and TRACKSSL_CONFIG) has a row in
    docs/configuration.md's keys table."""
    table = section((DOCS / "configuration.md").read_text(), "## Keys")
    rows = {match.group(1) for match in re.finditer(r"^\| `(TRACKSSL_\w+)` \|", table, re.M)}
    keys = {spec.key for spec in settings.KEYED if spec.key} | {settings.CONFIG_KEY}
    assert keys - rows == set()
    aliases = {alias for alias in settings.ALIASES if alias}
    assert aliases and all(alias in table for alias in aliases)


# --- the README ------------------------------------------------------------------------------


def test_readme_is_a_short_page_with_contents() -> None:
    """The README is at most 400 lines and opens with a table of contents that links every
    one of its second-level sections."""
    text = README.read_text()
    assert len(text.splitlines()) <= 400
    contents = section(text, "## Contents")
    headings = [line[3:] for _n, line in prose_lines(text) if line.startswith("## ")]
    assert headings[0] == "Contents"
    for heading in headings[1:]:
        assert f"(#{slug(heading)})" in contents, heading


def sh_blocks(text: str) -> list[str]:
    """The fenced ``sh`` blocks of ``text``."""
    return re.findall(r"```sh\n(.*?)```", text, re.DOTALL)


def ci_parts() -> dict[str, str]:
    """The command strings ``.ci/run`` assigns (install, main_job, tests)."""
    script = (ROOT / ".ci" / "run").read_text()
    parts = {}
    for name in ("install", "main_job", "tests"):
        [value] = re.findall(rf"^{name}=('[^']*')$", script, re.MULTILINE)
        [parts[name]] = shlex.split(value)
    return parts


def test_quick_start_clone_commands_are_what_ci_runs() -> None:
    """Under "From a clone" the README shows exactly two commands, one a block: the install
    that runs local mode on examples/targets.txt, and the test command; .ci/run runs those
    same strings (the first in its two parts), in that order."""
    clone = section(README.read_text(), "### From a clone")
    blocks = [block.strip() for block in sh_blocks(clone)]
    assert len(blocks) == 2 and all("\n" not in block for block in blocks), blocks
    parts = ci_parts()
    assert blocks == [f"{parts['install']} && {parts['main_job']}", parts["tests"]]
    assert parts["main_job"].endswith("check-once --targets examples/targets.txt")
    assert parts["tests"] == "bash scripts/test.sh"
    script = (ROOT / ".ci" / "run").read_text()
    order = [
        script.index('bash -c "$install"'),
        script.index('bash -c "$main_job"'),
        script.index('bash -c "$tests"'),
    ]
    assert order == sorted(order)
    assert re.search(r"isolated=\(unshare [^)]*--net\)", script)
    assert '"${isolated[@]}" bash -c "$main_job"' in script


def test_readme_install_lists_package_then_binary_then_pip() -> None:
    """The README's install section: the .deb/.rpm package first, then the release binary
    with its checksum, then pip; the file names are those the release builds."""
    install = section(README.read_text(), "## Install")
    package = install.index("### The package")
    binary = install.index("### The release binary")
    pip = install.index("### With pip")
    assert package < binary < pip
    assert '"$base/trackssl-agent_amd64.deb"' in install[package:binary]
    assert '"$base/trackssl-agent.x86_64.rpm"' in install[package:binary]
    assert "sha256sum --check" in install[binary:pip]
    assert "pip install" in README.read_text()
