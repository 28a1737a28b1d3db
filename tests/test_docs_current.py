"""The docs stay current: the version they name is metadata.json's, and every number in their tables is one that a
bench output committed under bench/results/ printed (with the version and command that produced it)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import BUNDLE, REPO

DOCS = (REPO / "README.md", BUNDLE / "docs" / "README.md")
RESULTS = REPO / "bench" / "results"
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
VERSION = re.compile(r"(?<![\w.])0\.\d+\.\d+(?![\w.])")
NUMBER = re.compile(r"(?<![\w.])(?:\d+\.\d+|\d{1,3}(?:,\d{3})+)(?![\w])")


def dependency_versions() -> set[str]:
    versions = {METADATA["monai_version"], METADATA["pytorch_version"], METADATA["numpy_version"]}
    return versions | set(METADATA["required_packages_version"].values())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_docs_name_no_version_but_the_current_one(doc):
    assert (REPO / "pyproject.toml").read_text().count(f'version = "{METADATA["version"]}"') == 1
    current = METADATA["version"]
    named = set(VERSION.findall(doc.read_text(encoding="utf-8"))) - dependency_versions()
    assert named <= {current}, f"{doc.name} names {named - {current}}, not the current {current}"


def table_numbers(text: str) -> list[tuple[str, str]]:
    """(number, row) for every decimal or thousands-separated number in a markdown table row."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    return [(number, row) for row in rows for number in NUMBER.findall(row)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_number_in_the_docs_tables_comes_from_a_committed_bench_output(doc):
    outputs = [p for p in RESULTS.rglob("*") if p.is_file() and p.suffix in (".txt", ".json", ".csv", ".log")]
    printed = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in outputs)
    for folder in {p.parent for p in outputs}:  # each folder says which version and which commands produced it
        readme = folder / "README.md"
        assert readme.is_file(), f"{folder} has no README.md naming the version and commands of its outputs"
        text = readme.read_text(encoding="utf-8")
        assert "version" in text and re.search(r"\bpython\b|\bbash\b|\bmake\b", text), f"{readme} names neither"
    missing = [(number, row) for number, row in table_numbers(doc.read_text(encoding="utf-8")) if number not in printed]
    assert not missing, f"{doc.name}: numbers no file under bench/results holds: {missing}"
