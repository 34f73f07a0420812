import importlib.util

from tests.paths import REPO_ROOT


def bench_module(script: str):
    """A script of bench/ loaded as a module under its own name (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{script}",
                                                  REPO_ROOT / "bench" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
