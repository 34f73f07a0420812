"""The trio shell, the only place trio lives in the switch: it accepts connections, moves
bytes through the codec, hands requests to the ledger, commits in groups and acts on the
effects the ledger returns."""
