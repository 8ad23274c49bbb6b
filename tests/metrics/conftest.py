"""Fixtures of the metric tests: a session-wide classifier cache, so no test writes to ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """One cache folder for the whole session (the shapes classifier is trained once)."""
    return tmp_path_factory.getbasetemp() / "classifier-cache"


@pytest.fixture(autouse=True)
def _isolated_cache(classifier_cache, monkeypatch):
    monkeypatch.setenv("UNLEARNCTL_CACHE", str(classifier_cache))


@pytest.fixture(scope="session")
def shapes_classifier(shapes_split, classifier_cache):
    from unlearnctl.metrics.classifier import load_or_train_classifier

    return load_or_train_classifier(shapes_split, classifier_cache / "classifiers")
