"""The layers import what they may: the codec, the core and the request layer are pure (no
trio, no lmdb, no prometheus_client), and the trio shell is the only place trio lives."""

import ast
import subprocess
import sys

from tests.paths import REPO_ROOT

PURE = ("switch.codec", "switch.core", "switch.ledger")
IO_LIBRARIES = ("trio", "lmdb", "prometheus_client")


def test_importing_the_pure_layers_loads_no_io_library():
    code = ("import sys, pkgutil, importlib\n"
            f"for name in {PURE!r}:\n"
            "    package = importlib.import_module(name)\n"
            "    for info in pkgutil.walk_packages(package.__path__, name + '.'):\n"
            "        importlib.import_module(info.name)\n"
            f"print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_trio_is_imported_only_by_the_shell_and_the_programs_built_on_it():
    # The receivers and the command line are programs of their own on top of the shell's
    # client; the pure layers, config and persistence never touch trio.
    allowed = ("switch/shell/", "switch/receivers/", "switch/cli/")
    offenders = []
    for path in sorted((REPO_ROOT / "switch").rglob("*.py")):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if any(name == "trio" or name.startswith("trio.") for name in _imports(path)):
            if not relative.startswith(allowed):
                offenders.append(relative)
    assert offenders == []


def test_uvloop_is_the_benchmarks_ceiling_and_never_the_switchs():
    # bench/bare_server.py --loop uvloop is a second ceiling to measure the switch against;
    # the switch runs on trio alone (README: the libraries and why).
    offenders = [path.relative_to(REPO_ROOT).as_posix()
                 for path in sorted((REPO_ROOT / "switch").rglob("*.py"))
                 if any(name.split(".")[0] in ("uvloop", "asyncio") for name in _imports(path))]
    assert offenders == []


def test_the_pure_layers_import_nothing_from_the_shell():
    offenders = []
    for layer in ("codec", "core", "ledger", "persistence"):
        for path in sorted((REPO_ROOT / "switch" / layer).rglob("*.py")):
            if any(name.startswith("switch.shell") for name in _imports(path)):
                offenders.append(path.relative_to(REPO_ROOT).as_posix())
    assert offenders == []


def _module_name(path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _packages_above(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles_among_the_switchs_modules():
    modules = {_module_name(path): path for path in (REPO_ROOT / "switch").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # `from switch.ledger import dispatch` names a module; `from switch.x import f` not.
            for candidate in (imported,):
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in modules and sub != name:
                        targets.add(sub)
        # Importing `switch.ledger.standing` runs `switch.ledger`'s __init__ first: an edge to
        # each package above a target, except the packages above `name` itself (already
        # running when `name` is imported). A package's __init__ importing its own submodules
        # keeps its edge: through it a cycle that runs over an __init__ is found.
        own = _packages_above(name)
        for target in list(targets):
            targets.update(p for p in _packages_above(target) if p in modules and p not in own)
        graph[name] = targets - {name} - own
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []
