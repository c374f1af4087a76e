"""The base package imports nothing from the worker: omnibroker and omnibridge never import omniworker (at the top of
a module or inside a function), so the broker, the bridge and omnictl load no worker code and the dependency arrows
point one way (omniworker -> omnibroker)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UPPER = "omniworker"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`, relative ones resolved against its package."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) ==
              "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def test_base_packages_import_nothing_from_the_worker():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for package in ("omnibroker", "omnibridge")
                 for path in sorted((ROOT / package).rglob("*.py"))
                 for line, module in _imports(path)
                 if module == UPPER or module.startswith(UPPER + ".")]
    assert not offenders, "\n".join(offenders)


def test_the_check_sees_relative_and_function_level_imports():
    """The parser itself: ctl.py imports its siblings relatively and inside functions only; both are found."""
    modules = {module for _, module in _imports(ROOT / "omnibroker" / "ctl.py")}
    assert {"omnibroker.commands", "omnibroker.client", "omnibroker.security"} <= modules
