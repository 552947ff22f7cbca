"""Shared fixtures of the deployment tests: the code index (built once per session) and the templates."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.callgraph import CodeIndex
from tests.deploy.cfn import TEMPLATES, load


@pytest.fixture(scope="session")
def code_index() -> CodeIndex:
    return CodeIndex.of_repo()


@pytest.fixture(scope="session")
def templates() -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in sorted(TEMPLATES.glob("*.yaml"))}
