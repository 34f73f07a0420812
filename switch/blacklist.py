"""The versioned per-school list of blocked cards (黑名单, docs/PROTOCOL.md §4.13).

Each change to a school's list is one new version holding the cards added and
removed. Terminals catch up with deltas since their version, or get the full
list when their version is older than what is kept.
"""

import msgpack

from switch import limits

_pack = msgpack.Packer(use_bin_type=True).pack


def _version_key(school: str) -> bytes:
    return b"blacklist_version:" + school.encode()


def _change_key(school: str, version: int) -> bytes:
    return school.encode() + b"\0" + version.to_bytes(8, "big")


def _member_key(school: str, card: str) -> bytes:
    return school.encode() + b"\0" + card.encode()


class Blacklist:
    def __init__(self, store):
        self.store = store

    def version(self, school: str) -> int:
        data = self.store.get("meta", _version_key(school))
        return 0 if data is None else int(data)

    def contains(self, school: str, card: str) -> bool:
        return self.store.get("blacklist_cards", _member_key(school, card)) is not None

    def change(self, school: str, add=(), remove=()) -> dict | None:
        """Record one new version; returns the push message, or None when nothing changed."""
        add = [card for card in add if not self.contains(school, card)]
        remove = [card for card in remove if self.contains(school, card)]
        if not add and not remove:
            return None
        version = self.version(school) + 1
        store = self.store
        for card in add:
            store.put("blacklist_cards", _member_key(school, card), b"")
        for card in remove:
            store.delete("blacklist_cards", _member_key(school, card))
        store.put("blacklist_changes", _change_key(school, version), _pack([add, remove]))
        store.put("meta", _version_key(school), str(version).encode())
        oldest_kept = version - limits.blacklist_changes_kept
        if oldest_kept >= 1:
            store.delete("blacklist_changes", _change_key(school, oldest_kept))
        return {"t": "blacklist", "version": version, "add": add, "remove": remove}

    def since(self, school: str, since: int) -> dict | None:
        """The reply fields for a `blacklist` request, or None when `since` is in the future."""
        current = self.version(school)
        if since > current:
            return None
        if since <= 0 or since < current - limits.blacklist_changes_kept:
            prefix = school.encode() + b"\0"
            full = [key[len(prefix):].decode()
                    for key in self.store.keys_with_prefix("blacklist_cards", prefix)]
            return {"version": current, "full": full}
        added: dict[str, None] = {}
        removed: dict[str, None] = {}
        for version in range(since + 1, current + 1):
            data = self.store.get("blacklist_changes", _change_key(school, version))
            assert data is not None, (school, version)
            add, remove = msgpack.unpackb(data, raw=False)
            for card in add:
                removed.pop(card, None)
                added[card] = None
            for card in remove:
                if card in added:
                    added.pop(card)
                else:
                    removed[card] = None
        return {"version": current, "add": list(added), "remove": list(removed)}
