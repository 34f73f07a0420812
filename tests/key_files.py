"""Key files as the project writes them: mode 0600 (switch/config/keyfile.py refuses a key
file others may read or write)."""


def write_private(path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)
