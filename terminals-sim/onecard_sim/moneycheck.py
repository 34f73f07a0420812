"""The money check: the switch's money of every account the run touched (both purses: the
balance and the subsidy, docs/PROTOCOL.md §4.17), fetched with `account` (admin), against
the simulator's ledger of acknowledged replies."""

from collections import Counter

from onecard_sim import limits
from onecard_sim.ledger import ExpectedLedger
from onecard_sim.provision import open_wires, sharded


async def check_money(address, admin_key: bytes, ledger: ExpectedLedger,
                      connections: int = limits.balance_check_connections) -> dict:
    accounts = sorted(ledger.balance)
    wires = await open_wires(address, "admin", admin_key, connections)
    try:
        replies = await sharded(wires, [{"t": "account", "account": a} for a in accounts])
    finally:
        for wire in wires:
            wire.close()
    actual = {}
    statuses = Counter()
    held_accounts = 0
    pin_locked = 0
    for account, reply in zip(accounts, replies):
        if reply and reply.get("code") == "ok":
            money = reply["balance"] + reply.get("subsidy", 0)
            actual[account] = money
            statuses[reply.get("status")] += 1
            held_accounts += reply.get("available") != money
            pin_locked += bool(reply.get("pin_locked"))
    mismatches = ledger.compare(actual)
    return {
        "accounts": len(accounts),
        "mismatches": len(mismatches),
        "examples": [{"account": a, "expected_fen": e, "switch_fen": g}
                     for a, e, g in mismatches[:limits.mismatches_shown_max]],
        "expected_total_fen": ledger.total_fen,
        "switch_total_fen": sum(actual.values()),
        "acknowledged_moves": ledger.moves,
        "statuses": dict(statuses),
        "accounts_with_open_holds": held_accounts,
        "pin_locked_accounts": pin_locked,
    }
