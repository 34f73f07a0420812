"""The versioned per-school list of blocked cards (黑名单, docs/PROTOCOL.md §4.13).

Each change to a school's list is one new version holding the cards added and
removed. Terminals catch up with deltas since their version, or load the full
list in pages of at most `blacklist_page_cards_max` cards (docs/PROTOCOL.md §4.13.1)
when their version is too far behind or the delta would not fit one page.
"""

import msgpack

from switch import limits

_pack = msgpack.Packer(use_bin_type=True).pack


def _version_key(school: str) -> bytes:
    return b"blacklist_version:" + school.encode()


def _school_prefix(school: str) -> bytes:
    return school.encode() + b"\0"


def _change_key(school: str, version: int) -> bytes:
    return _school_prefix(school) + version.to_bytes(8, "big")


def _full_below_key(school: str) -> bytes:
    return b"blacklist_full_below:" + school.encode()


def _member_key(school: str, card: str) -> bytes:
    return _school_prefix(school) + card.encode()


def member_of_key(key: bytes) -> tuple[str, str]:
    """(school, card) of a `blacklist_cards` key."""
    school, _, card = bytes(key).partition(b"\0")
    return school.decode(), card.decode()


class Blacklist:
    def __init__(self, store):
        self.store = store

    def version(self, school: str) -> int:
        data = self.store.get("meta", _version_key(school))
        return 0 if data is None else int(data)

    def full_below(self, school: str) -> int:
        """A `since` below this gets the full list (0: none; set at a restore)."""
        data = self.store.get("meta", _full_below_key(school))
        return 0 if data is None else int(data)

    def start_after_restore(self, school: str) -> int:
        """After a restore the books are back at the backup's version, and the changes a
        till saw since are gone: a delta from its version would name other changes under the
        same numbers, and a `since` above the version is refused, so it would keep a stolen
        card off its list for good. The version jumps past any a till can have seen
        (`blacklist_restore_jump_version`) and every `since` below it gets the full list.
        Written at once (durable before any hello says the new version); returns it."""
        version = self.version(school) + limits.blacklist_restore_jump_version
        self.store.write_now("meta", _full_below_key(school), str(version).encode())
        self.store.write_now("meta", _version_key(school), str(version).encode())
        return version

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
        if len(add) + len(remove) > limits.blacklist_page_cards_max:
            # Too many cards for one frame: terminals fetch them (paged) instead. No
            # `version` either, so a reader that knows nothing of `fetch` cannot take this
            # for an empty change and believe itself current.
            return {"t": "blacklist", "fetch": True}
        return {"t": "blacklist", "version": version, "add": add, "remove": remove}

    def since(self, school: str, since: int, after: str | None = None) -> dict | None:
        """The reply fields for a `blacklist` request, or None when `since` is in the future.

        A delta when one page holds it and `after` is absent; else the page of the full
        list that starts after card `after` (from the first card without it)."""
        current = self.version(school)
        if since > current:
            return None
        if (after is None and 0 < since and since >= self.full_below(school)
                and current - since <= limits.blacklist_delta_versions_max):
            delta = self._delta(school, since, current)
            if delta is not None:
                return delta
        return self._page(school, current, after)

    def _delta(self, school: str, since: int, current: int) -> dict | None:
        """The changes since `since`, or None when they name more cards than a page holds
        (counted as read, so the work stops there too)."""
        added: dict[str, None] = {}
        removed: dict[str, None] = {}
        cards_read = 0
        for version in range(since + 1, current + 1):
            data = self.store.get("blacklist_changes", _change_key(school, version))
            assert data is not None, (school, version)
            add, remove = msgpack.unpackb(data, raw=False)
            cards_read += len(add) + len(remove)
            if cards_read > limits.blacklist_page_cards_max:
                return None
            for card in add:
                removed.pop(card, None)
                added[card] = None
            for card in remove:
                if card in added:
                    added.pop(card)
                else:
                    removed[card] = None
        return {"version": current, "add": list(added), "remove": list(removed)}

    def _page(self, school: str, current: int, after: str | None) -> dict:
        prefix = _school_prefix(school)
        keys, more = self.store.keys_after(
            "blacklist_cards", prefix, None if after is None else prefix + after.encode(),
            limits.blacklist_page_cards_max)
        return {"version": current, "full": [key[len(prefix):].decode() for key in keys],
                "more": more}
