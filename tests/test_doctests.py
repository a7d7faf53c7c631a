"""Every docstring example in the library runs and says what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import certify
import classifiers
import denoisers

MODULES = sorted(
    info.name
    for package in (certify, denoisers, classifiers)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
