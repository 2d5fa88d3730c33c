"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True)
def _no_node_settings_from_the_environment(monkeypatch):
    """A node's secure-aggregation pins may come from FEDKD_NODE_CONFIG (fedkd.apps.secure): no test
    inherits one from the shell or from another test, so every pin test sees the node defaults."""
    monkeypatch.delenv("FEDKD_NODE_CONFIG", raising=False)
