"""Hot water holds as stored: `holds` (id -> msgpack state) and `hold_expiry`, the index of
the open ones by expiry time (so expiring them is a range scan, and counting them a stat)."""

import msgpack

_pack = msgpack.Packer(use_bin_type=True).pack


def unpack(data):
    return msgpack.unpackb(data, raw=False)


def _expiry_key(expires_ms: int, hold_id: str) -> bytes:
    return expires_ms.to_bytes(8, "big") + hold_id.encode()


class Holds:
    """Open holds: `holds` (id -> state) plus the `hold_expiry` index of the open ones."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.store = ledger.store
        self.open_count = self._count_open()

    def _count_open(self) -> int:
        return sum(1 for _ in self.store.committed_items("hold_expiry"))

    def recount(self) -> None:
        self.open_count = self._count_open()

    def get(self, hold_id: str) -> dict | None:
        data = self.store.get("holds", hold_id.encode())
        return None if data is None else unpack(data)

    def open(self, hold_id: str, hold: dict) -> None:
        self.store.put("holds", hold_id.encode(), _pack(hold))
        self.store.put("hold_expiry", _expiry_key(hold["expires"], hold_id), b"")
        self.open_count += 1

    def close(self, hold_id: str, hold: dict, state: str) -> None:
        hold["state"] = state
        self.store.put("holds", hold_id.encode(), _pack(hold))
        self.store.delete("hold_expiry", _expiry_key(hold["expires"], hold_id))
        self.open_count -= 1

    def due(self, now_ms: int, count_max: int) -> list[str]:
        """Ids of up to `count_max` committed open holds whose time ran out by `now_ms`."""
        now = now_ms.to_bytes(8, "big")
        due = []
        for key, _ in self.store.committed_items("hold_expiry"):
            if key[:8] > now or len(due) >= count_max:
                break
            due.append(key[8:].decode())
        return due
