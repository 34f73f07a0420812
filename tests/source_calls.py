"""Which modules of the switch outside its core make a given call, read from their source."""

import ast
import pathlib

import switch

PACKAGE = pathlib.Path(switch.__file__).parent


def modules_outside_core_calling(method: str, on: str | None = None) -> set[str]:
    """Paths (relative to the package) of modules outside `switch/core/` that call
    `<anything>.method(...)`, or `on.method(...)` when `on` names the object."""
    callers = set()
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == method
                    and (on is None or (isinstance(node.func.value, ast.Name)
                                        and node.func.value.id == on))):
                callers.add(path.relative_to(PACKAGE).as_posix())
    return callers
