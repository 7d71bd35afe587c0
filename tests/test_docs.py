"""The user guide: a site that builds strictly, reference pages generated from the code and the
benchmark results (never hand-edited), a README short enough to read in five minutes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_the_command_reference_is_generated_from_the_parsers():
    from prefscale.cli import build_parser
    from prefscale.cli_reference import REGENERATE, cli_reference

    assert (REPO / "docs" / "cli.md").read_text() == cli_reference(build_parser()), f"docs/cli.md is stale; regenerate it: {REGENERATE}"


def test_the_measured_pages_are_rendered_from_the_results():
    """benchmarks.md, results.md, dump-leaderboard.md, the README's table and docs/img."""
    from render_page import REGENERATE, stale

    assert stale() == [], f"stale (the JSON in benchmarks/results says otherwise); regenerate them: {REGENERATE}"


def test_every_reject_reason_is_documented():
    from prefscale.data.validate import REASONS

    page = (REPO / "docs" / "data.md").read_text()
    assert [r for r in REASONS if f"`{r}`" not in page] == []


def test_the_readme_is_short_and_points_at_the_guide():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for needed in ("make setup", "make demo", "make test", "prefscale predict", "docs/cluster.md", "mkdocs"):
        assert needed in readme, needed


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # Material's end-of-life banner
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in ("getting-started", "data", "recipe", "cluster", "scoring", "leaderboard", "tracking", "reliability", "CONFIG", "cli", "benchmarks"):
        assert f"{page}/index.html" in pages, page
    assert not re.search(r"^WARNING", result.stderr, re.MULTILINE)
