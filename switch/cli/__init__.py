"""The command lines: `serve` and `audit` (main.py), the card office's `admin` commands
(admin.py) and `demo` (demo.py), each a `main(argv=None) -> int`."""
