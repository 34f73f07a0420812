"""The simulator's own books: what each account's balance must be, built only from
acknowledged `ok` replies. At the end it is compared with the switch's balances.

A request that may reach the switch more than once (a WeChat Pay notification sent
twice, a request resent after its connection died, an offline record) is counted once
per (credential, id), whichever of its replies arrives first, a replay included.
"""


class ExpectedLedger:
    def __init__(self):
        self.balance: dict[str, int] = {}
        self._counted: set = set()
        self.moves = 0

    def open(self, account: str) -> None:
        self.balance.setdefault(account, 0)

    def apply(self, account: str, delta_fen: int, who: str | None = None, request_id=None) -> bool:
        """Move `delta_fen` unless this (who, id) was counted already; True when applied.

        Pass `who` and `request_id` only for requests that may be answered more than once.
        """
        if who is not None:
            key = (who, request_id)
            if key in self._counted:
                return False
            self._counted.add(key)
        self.balance[account] = self.balance.get(account, 0) + delta_fen
        self.moves += 1
        return True

    def compare(self, actual: dict) -> list:
        """(account, expected, actual) for every account whose balance differs."""
        mismatches = []
        for account, expected in sorted(self.balance.items()):
            got = actual.get(account)
            if got != expected:
                mismatches.append((account, expected, got))
        return mismatches

    @property
    def total_fen(self) -> int:
        return sum(self.balance.values())
