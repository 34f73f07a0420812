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
frame_complete_timeout_s = 10.0    # a frame begun must be finished within this
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
idempotency_forget_per_pass_max = 10_000   # housekeeping deletes at most this many a second
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

# --- Downstream forwarding (PROTOCOL.md §6) ---
forward_records_per_frame_max = 256     # records in one `records` frame
forward_records_bytes_max = 60_000      # their msgpack size; the rest of 65,536 is header and tag
forward_scan_txns_max = 1024            # txns read for one frame (a filter may skip them all)
forward_connect_timeout_s = 5.0
forward_reply_timeout_s = 10.0          # hello reply and each `records` reply
forward_backoff_initial_s = 0.05        # reconnect delay, doubled per failure, with jitter
forward_backoff_max_s = 5.0
forward_position_kick_interval_s = 1.0  # at most this long before an idle switch commits a position

# --- Reference receivers (switch/receivers/) ---
receiver_connections_max = 16           # sockets; a new sign-on of a credential replaces its old one
receiver_idle_timeout_s = 3600.0
receiver_day_segments_max = 4096        # billing: txn -> local day map kept for reversals
receiver_pending_credits_max = 1024     # utility: credits to accounts not yet known as rooms

# --- Operator command line (switch/admin_cli.py) ---
cli_connect_timeout_s = 10.0            # connect and sign on
cli_reply_timeout_s = 60.0              # one request, or one pipelined batch of an import

# --- Configuration ranges (switch/config.py): the (lowest, highest) a configured value may
# take; outside it the switch refuses to start, naming the key. ---
idle_timeout_s_range = (1.0, 86_400.0)
hold_timeout_s_range = (60, 86_400)
reversal_window_s_range = (60, 30 * 24 * 3600)        # and at most idempotency_retention_s
offline_window_s_range = (60, 30 * 24 * 3600)         # and at most idempotency_retention_s
idempotency_retention_s_range = (3600, 366 * 24 * 3600)
max_amount_fen_range = (1, 100_000_000_000)
batch_requests_max_range = (1, 65_536)
batch_wait_s_range = (0.0, 0.1)
connections_max_range = (1, 1_000_000)
school_limit_fen_range = (1, 100_000_000_000)          # per_tx, daily and their maxima
school_no_pin_fen_range = (0, 100_000_000_000)         # 0: every card payment needs the PIN
school_name_chars_range = (1, 64)
building_digits_range = (1, 8)                         # split_buildings: "9", "12"
