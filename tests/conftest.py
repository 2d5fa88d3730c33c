"""Shared test set-up."""

import pytest


@pytest.fixture(autouse=True)
def _no_node_settings_from_the_environment(monkeypatch):
    """A node's secure-aggregation pins may come from FEDKD_NODE_CONFIG (fedkd.apps.secure): no test
    inherits one from the shell or from another test, so every pin test sees the node defaults."""
    monkeypatch.delenv("FEDKD_NODE_CONFIG", raising=False)


@pytest.fixture
def inprocess_grids(monkeypatch):
    """The in-process engine's Grids, as runs make them (a list, cleared by the test between runs):
    their `nodes` hold each node's Context, so a test can read what a node keeps in its state."""
    import fedkd.apps.inprocess as inprocess

    grids = []
    real = inprocess.InProcessGrid

    def keep(*args, **kwargs):
        grids.append(real(*args, **kwargs))
        return grids[-1]

    monkeypatch.setattr(inprocess, "InProcessGrid", keep)
    return grids
