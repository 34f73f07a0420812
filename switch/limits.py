"""Every bound and default of the switch, named once, units last.

Wire-contract values (PROTOCOL.md) are fixed; the rest are this implementation's
choices and may be overridden by configuration where noted.
"""

# --- Framing and sessions (PROTOCOL.md §1-2; fixed by the contract) ---
frame_size_bytes_min = 17          # 1-byte msgpack map + 16-byte tag
frame_size_bytes_max = 65536
frame_length_prefix_bytes = 4
tag_size_bytes = 16
nonce_size_bytes = 16
credential_key_size_bytes = 32
protocol_version = 1
hello_timeout_s = 10.0
idle_timeout_s = 120.0             # default, configurable
requests_in_flight_max = 64        # per connection; past it we stop reading

# --- Identifiers (§4) ---
id_str_chars_max = 64
id_int_max = 2**64 - 1             # msgpack's largest unsigned int
account_id_chars_max = 32
card_id_chars_min = 4
card_id_chars_max = 32
credential_id_chars_max = 64
source_chars_max = 64
holder_chars_max = 64
pin_digits = 6
pin_failures_max = 5               # the 5th wrong PIN in a row locks

# --- Money (§4) ---
max_amount_fen = 10_000_000
default_no_pin_fen = 5_000
default_per_tx_fen = 50_000
default_daily_fen = 100_000
default_no_pin_max_fen = 20_000
default_per_tx_max_fen = 200_000
default_daily_max_fen = 500_000
balance_fen_max = 2**62            # far above any real balance; guards int64 overflow

# --- Retention and windows (§4) ---
idempotency_retention_s = 7 * 24 * 3600
reversal_window_s = 24 * 3600
hold_timeout_s = 30 * 60
offline_window_s = 7 * 24 * 3600
offline_records_max = 500
offline_future_s = 5 * 60          # an offline tap this far ahead of our clock is refused
history_limit_default = 50
history_limit_max = 200

# --- Blacklist (§4) ---
blacklist_changes_kept = 10_000    # per school; an older `since` gets the full list
blacklist_delta_cards_max = 20_000 # a delta longer than this is sent as the full list

# --- Server (implementation choices) ---
connections_max = 12_000           # accepted sockets beyond this are closed at once
listen_backlog = 4096
receive_size_bytes = 65536 + 4     # one receive can hold a whole max frame
send_buffer_bytes_max = 4 * 1024 * 1024  # a client that never reads is dropped past this

# --- Group commit ---
batch_requests_max = 4096          # requests gathered into one LMDB transaction
batch_wait_s = 0.0005              # how long the committer lets a batch fill at light load
commit_retries_map_full_max = 8    # map growth attempts before a batch is failed

# --- Storage ---
lmdb_map_size_bytes_initial = 256 * 1024 * 1024
lmdb_map_growth_factor = 2
lmdb_max_dbs = 32
lmdb_max_readers = 126
