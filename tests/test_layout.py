"""The layers import downwards only: common ← dataloaders, alignment, models, metrics ← engine ← entry scripts.

Checked on the source (every import statement, function-local ones included), so a new upward import fails
here before it becomes a cycle."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = {"common", "dataloaders", "alignment", "models", "metrics", "engine", "bench", "tools", "tests",
        "train_t5_stagcn", "evaluate"}
# What each package may import of ours (itself always).
ALLOWED = {
    "common": set(),
    "dataloaders": {"common"},
    "alignment": {"common", "dataloaders"},
    "models": {"common", "dataloaders", "alignment"},
    "metrics": {"common", "dataloaders"},
    "engine": {"common", "dataloaders", "alignment", "models", "metrics"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {f"{p.relative_to(REPO)} imports {sorted(imported_packages(p) - ALLOWED[package] - {package})}"
             for p in sorted((REPO / package).glob("*.py")) if imported_packages(p) - ALLOWED[package] - {package}}
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layer_table_has_no_cycle():
    seen: dict[str, int] = {}

    def depth(package: str, stack: tuple = ()) -> int:
        assert package not in stack, f"cycle: {' → '.join(stack + (package,))}"
        if package not in seen:
            seen[package] = 1 + max((depth(d, stack + (package,)) for d in ALLOWED[package]), default=0)
        return seen[package]

    assert [depth(p) for p in ALLOWED]
