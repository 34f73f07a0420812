"""Subsidy batches as stored: `subsidy_batches` (account + batch -> what is left of it and
when it lapses), `subsidy_expiry`, the index of the batches with money left by the end
of their term (so expiring them is a range scan), and `subsidy_grants` with its index
`subsidy_grant_expiry`, the ids that granted into a batch, kept until
`subsidy_grants_kept_s` past the end of its term."""

import msgpack

from switch import limits
from switch.persistence.keys import (GRANTS_FORGOTTEN_BELOW, SUBSIDY_GRANT, forgotten_below,
                                     subsidy_grant_expiry_key)

_pack = msgpack.Packer(use_bin_type=True).pack


def _key(account_id: str, batch: str) -> bytes:
    return account_id.encode() + b"\0" + batch.encode()


def _expiry_key(end_ms: int, account_id: str, batch: str) -> bytes:
    return end_ms.to_bytes(8, "big") + _key(account_id, batch)


class SubsidyBatches:
    def __init__(self, store):
        self.store = store

    def get(self, account_id: str, batch: str) -> dict | None:
        data = self.store.get("subsidy_batches", _key(account_id, batch))
        return None if data is None else msgpack.unpackb(data, raw=False)

    def save(self, account_id: str, batch: str, state: dict) -> None:
        """Keep `state` ({remaining, expires, end_ms}); a batch with nothing left is dropped."""
        if state["remaining"] == 0:
            self.store.delete("subsidy_batches", _key(account_id, batch))
            self.store.delete("subsidy_expiry", _expiry_key(state["end_ms"], account_id, batch))
            return
        self.store.put("subsidy_batches", _key(account_id, batch), _pack(state))
        self.store.put("subsidy_expiry", _expiry_key(state["end_ms"], account_id, batch), b"")

    def of_account(self, account_id: str) -> list[tuple[str, dict]]:
        """The account's batches with money left, those that lapse first first (at most
        `subsidy_batches_per_account_max` + 1, so a caller can tell an account that is full)."""
        prefix = account_id.encode() + b"\0"
        keys, _ = self.store.keys_after("subsidy_batches", prefix, None,
                                        limits.subsidy_batches_per_account_max + 1)
        batches = [(key[len(prefix):].decode(), msgpack.unpackb(
            self.store.get("subsidy_batches", key), raw=False)) for key in keys]
        return sorted(batches, key=lambda item: (item[1]["end_ms"], item[0]))

    def due(self, now_ms: int, count_max: int) -> list[tuple[str, str]]:
        """(account, batch) of up to `count_max` committed batches whose term ended by now."""
        now = now_ms.to_bytes(8, "big")
        due = []
        for key, _ in self.store.committed_items("subsidy_expiry"):
            if key[:8] > now or len(due) >= count_max:
                break
            account, batch = key[8:].decode().split("\0", 1)
            due.append((account, batch))
        return due

    def grant(self, grant_key: bytes) -> tuple[int, int] | None:
        """(the term's last day, the amount) of a grant made under this key, or None."""
        data = self.store.get("subsidy_grants", grant_key)
        return None if data is None else SUBSIDY_GRANT.unpack(data)

    def note_grant(self, grant_key: bytes, day: int, amount: int) -> None:
        """Keep a grant until its term ends; one made under the key for an earlier term (a
        batch name used again) is replaced, index entry and all."""
        previous = self.grant(grant_key)
        if previous is not None and previous[0] != day:
            self.store.delete("subsidy_grant_expiry",
                              subsidy_grant_expiry_key(previous[0], grant_key))
        self.store.put("subsidy_grants", grant_key, SUBSIDY_GRANT.pack(day, amount))
        self.store.put("subsidy_grant_expiry", subsidy_grant_expiry_key(day, grant_key), b"")

    def forget_grants_before(self, day: int, visits_max: int) -> int:
        """Forget the grants of terms whose last day is below `day`, visiting at most
        `visits_max` committed index entries; how many were forgotten.

        The index is read as committed: an entry an earlier pass forgot, not committed yet,
        is passed over, and a grant is forgotten only while it is still the one the entry
        names (a newer term's grant under the same key has an entry of its own)."""
        limit = day.to_bytes(8, "big")
        forgotten = visits = 0
        for key, _ in self.store.committed_items("subsidy_grant_expiry"):
            if key[:8] >= limit or visits >= visits_max:
                break
            visits += 1
            if self.store.get("subsidy_grant_expiry", key) is None:
                continue
            above = int.from_bytes(key[:8], "big") + 1
            if forgotten_below(self.store.get("meta", GRANTS_FORGOTTEN_BELOW)) < above:
                # In the same transaction as what it forgets: every grant of a term ending
                # after the latest one forgotten is still kept, which audit checks the
                # journal against.
                self.store.put("meta", GRANTS_FORGOTTEN_BELOW, above.to_bytes(8, "big"))
            self.store.delete("subsidy_grant_expiry", key)
            grant_key = key[8:]
            current = self.grant(grant_key)
            if current is not None and current[0] == int.from_bytes(key[:8], "big"):
                self.store.delete("subsidy_grants", grant_key)
                forgotten += 1
        return forgotten
