"""benchmarks/mutation_check.py's bugs still fit the code: each old text occurs exactly once in its file and
the mutated file still compiles. When code moves, this test (not a silent "pattern stale") says which
pattern to update."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "benchmarks" / "mutation_check.py")
mutation_check = sys.modules["mutation_check"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_check)


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_pattern_matches_the_code_exactly_once(mutation):
    text = (ROOT / mutation.file).read_text()
    assert text.count(mutation.old) == 1, f"{mutation.name}: update its pattern in benchmarks/mutation_check.py"
    compile(mutation_check.apply(text, mutation), mutation.file, "exec")
    assert all((ROOT / path).is_file() for path in mutation.tests)
    assert all(o.split("::")[0] in mutation.tests for o in mutation.oracles)  # its oracles are among the files run
    assert [m.name for m in mutation_check.MUTATIONS].count(mutation.name) == 1
