"""The master key file: the keys that seal a data dir's secrets, kept outside the data dir.

A stolen data dir without this file yields no credential key, no QR secret and no PIN: every
such secret in LMDB is sealed (AES-GCM, bound to the record it belongs to) under a seal key,
and every PIN and ID verifier is keyed with the verifier key. The file is small JSON, mode
0600, beside the data dir by default (the data dir's path with `.key` appended):

    {"format": "campus-card-switch master key", "version": 1,
     "current": 2, "seal_keys": {"1": "<64 hex>", "2": "<64 hex>"}, "verifier_key": "<64 hex>"}

Each sealed value names the seal key that sealed it, so `rotate-master-key` can add a key,
re-seal everything under it and then drop the old one. The verifier key never changes: a
verifier cannot be re-keyed without the PIN it covers.
"""

import json
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from switch import limits
from switch.config.keyfile import exposure

FORMAT = "campus-card-switch master key"
VERSION = 1
KEY_SUFFIX = ".key"
_SEALED_VERSION = 1
_NONCE_SIZE_BYTES = 12
_KEY_ID_SIZE_BYTES = 4
_HEADER_SIZE_BYTES = 1 + _KEY_ID_SIZE_BYTES + _NONCE_SIZE_BYTES


class MasterKeyError(Exception):
    """The master key file is missing, unreadable, misplaced or not this data dir's; the
    message says which and what to do, never a key."""


class SealError(Exception):
    """A sealed value does not open: another master key, or a value moved to another record."""


@dataclass(frozen=True)
class MasterKey:
    seal_keys: dict          # key id -> 32-byte AES-256-GCM key
    current: int             # the id new values are sealed under
    verifier_key: bytes      # keys every PIN and ID verifier
    # One cipher per key id, made on first use: a QR payment opens its secret every time.
    _ciphers: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls({1: os.urandom(limits.master_key_size_bytes)}, 1,
                   os.urandom(limits.master_key_size_bytes))

    def with_new_seal_key(self) -> "MasterKey":
        """The same keys plus a new current seal key (the old ones still open old values)."""
        new_id = max(self.seal_keys) + 1
        return MasterKey({**self.seal_keys, new_id: os.urandom(limits.master_key_size_bytes)},
                         new_id, self.verifier_key)

    def only_current(self) -> "MasterKey":
        return MasterKey({self.current: self.seal_keys[self.current]}, self.current,
                         self.verifier_key)

    def seal(self, purpose: bytes, bound_to: bytes, plaintext: bytes) -> bytes:
        """`plaintext` sealed under the current key; it opens only for the same purpose and
        record, so a sealed value copied onto another record does not open."""
        nonce = os.urandom(_NONCE_SIZE_BYTES)
        header = (bytes([_SEALED_VERSION]) + self.current.to_bytes(_KEY_ID_SIZE_BYTES, "big")
                  + nonce)
        return header + self._cipher(self.current).encrypt(
            nonce, bytes(plaintext), _associated(purpose, bound_to, header))

    def open(self, purpose: bytes, bound_to: bytes, sealed: bytes) -> bytes:
        sealed = bytes(sealed)
        if len(sealed) <= _HEADER_SIZE_BYTES or sealed[0] != _SEALED_VERSION:
            raise SealError("not a sealed value")
        key_id = int.from_bytes(sealed[1:1 + _KEY_ID_SIZE_BYTES], "big")
        if key_id not in self.seal_keys:
            raise SealError("sealed under a key this master key file does not hold")
        header = sealed[:_HEADER_SIZE_BYTES]
        try:
            return self._cipher(key_id).decrypt(
                sealed[1 + _KEY_ID_SIZE_BYTES:_HEADER_SIZE_BYTES], sealed[_HEADER_SIZE_BYTES:],
                _associated(purpose, bound_to, header))
        except InvalidTag:
            raise SealError("sealed value does not open") from None

    def _cipher(self, key_id: int) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            cipher = self._ciphers[key_id] = AESGCM(self.seal_keys[key_id])
        return cipher

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "current": self.current,
                           "seal_keys": {str(i): k.hex() for i, k in self.seal_keys.items()},
                           "verifier_key": self.verifier_key.hex()}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "MasterKey":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ValueError("not a master key file of this version")
            seal_keys = {int(i): _key_of_hex(k) for i, k in data["seal_keys"].items()}
            current = data["current"]
            if type(current) is not int or current not in seal_keys:
                raise ValueError("current names no seal key")
            return cls(seal_keys, current, _key_of_hex(data["verifier_key"]))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MasterKeyError(f"{where} is not a usable master key file ({error}); restore "
                                 f"it from the backup") from None

    def __repr__(self) -> str:   # never a key in a log or a traceback
        return f"MasterKey(seal key ids {sorted(self.seal_keys)}, current {self.current})"


def _associated(purpose: bytes, bound_to: bytes, header: bytes) -> bytes:
    return purpose + b"\0" + bytes(bound_to) + b"\0" + header


def _key_of_hex(text) -> bytes:
    key = bytes.fromhex(text)
    if len(key) != limits.master_key_size_bytes:
        raise ValueError(f"a key is not {limits.master_key_size_bytes} bytes")
    return key


def default_path(data_dir: str) -> str:
    """Beside the data dir, never inside it: its path with `.key` appended."""
    return os.path.abspath(data_dir).rstrip(os.sep) + KEY_SUFFIX


def resolve_path(data_dir: str, given: str | None) -> str:
    """The master key file's path: `given`, else the default; refused inside the data dir,
    where a copy of the data dir would carry its own key."""
    path = os.path.abspath(given) if given else default_path(data_dir)
    inside = os.path.realpath(os.path.dirname(path))
    data = os.path.realpath(data_dir)
    if inside == data or inside.startswith(data.rstrip(os.sep) + os.sep):
        raise MasterKeyError(f"the master key file {path} is inside the data dir {data_dir}; "
                             f"keep it outside (default: {default_path(data_dir)})")
    return path


def read(path: str) -> MasterKey:
    try:
        with open(path, encoding="utf-8") as handle:
            _check_private(path, os.fstat(handle.fileno()))
            text = handle.read(limits.master_key_file_size_bytes_max + 1)
    except FileNotFoundError:
        raise MasterKeyError(
            f"master key file {path} not found; the switch does not start without the key "
            f"file made when the data dir was initialised: put back the copy kept apart (a "
            f"backup never holds it), or name it with --master-key or master_key_file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MasterKeyError(f"cannot read the master key file {path}: "
                             f"{getattr(error, 'strerror', None) or error}") from None
    if len(text) > limits.master_key_file_size_bytes_max:
        raise MasterKeyError(f"{path} is larger than a master key file can be")
    return MasterKey.from_json(text, path)


def _check_private(path: str, status: os.stat_result) -> None:
    """Refused when others may read or write it, as PostgreSQL refuses such a server key
    (keyfile.exposure): it opens every secret of the data dir, and a copy put back from
    other media (a restore at 3 a.m.) may come with the media's modes. The switch writes it
    0600."""
    problem = exposure(path, status)
    if problem:
        what, remedy = problem
        raise MasterKeyError(f"master key file {path} {what}; it opens every secret of the "
                             f"data dir: {remedy}")


def create(path: str, master: MasterKey) -> None:
    """Write a new master key file (0600), refusing to overwrite one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MasterKeyError(f"{path} exists; a new data dir never reuses a master key file "
                             f"(move it away, or name another with --master-key)") from None
    except OSError as error:
        raise MasterKeyError(f"cannot create the master key file {path}: "
                             f"{error.strerror}") from None
    _write(fd, master)
    _sync_directory(path)


def replace(path: str, master: MasterKey) -> None:
    """Replace the master key file whole or not at all (rotation)."""
    temporary = path + ".tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        _keep_owner(fd, path)
        _write(fd, master)
        os.replace(temporary, path)
    except BaseException:
        # A part of a key file (a full disk) is neither left to be mistaken for one nor
        # left holding key material.
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(path)


def _keep_owner(fd: int, path: str) -> None:
    """Root rotating a service's key: the new file belongs to whom the old one did, or the
    service could not read it and would not start (an outage after a successful rotation)."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        return
    if os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
        os.fchown(fd, old.st_uid, old.st_gid)


def _write(fd: int, master: MasterKey) -> None:
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(master.to_json())
        handle.flush()
        os.fsync(handle.fileno())


def _sync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
