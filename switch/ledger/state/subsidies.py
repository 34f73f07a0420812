"""Subsidy batches as stored: `subsidy_batches` (account + batch -> what is left of it and
when it lapses), `subsidy_expiry`, the index of the batches with money left by the end
of their term (so expiring them is a range scan), and `subsidy_grants` with its index
`subsidy_grant_expiry`, the ids that granted into a batch, kept until its term has ended."""

import msgpack

from switch import limits
from switch.persistence.keys import subsidy_grant_expiry_key, term_day

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

    def granted(self, grant_key: bytes) -> bool:
        return self.store.get("subsidy_grants", grant_key) is not None

    def note_grant(self, grant_key: bytes, expires: str) -> None:
        day = term_day(expires)
        self.store.put("subsidy_grants", grant_key, day.to_bytes(8, "big"))
        self.store.put("subsidy_grant_expiry", subsidy_grant_expiry_key(day, grant_key), b"")

    def forget_grants_before(self, day: int, count_max: int) -> int:
        """Forget up to `count_max` committed grants of terms whose last day is below `day`."""
        limit = day.to_bytes(8, "big")
        forgotten = 0
        for key, _ in self.store.committed_items("subsidy_grant_expiry"):
            if key[:8] >= limit or forgotten >= count_max:
                break
            self.store.delete("subsidy_grant_expiry", key)
            self.store.delete("subsidy_grants", key[8:])
            forgotten += 1
        return forgotten
