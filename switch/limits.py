"""Every bound and default of the switch, named once, units last.

Wire-protocol values (docs/PROTOCOL.md) are fixed; the rest are this implementation's
choices and may be overridden by configuration where noted.
"""

# --- Framing and sessions (docs/PROTOCOL.md §1.5; fixed by the protocol) ---
frame_size_bytes_min = 17          # 1-byte msgpack map + 16-byte tag
frame_size_bytes_max = 65536
# A hello's body (t, v, who, nonce, at): decoded before its tag can be checked, so a larger
# one is refused unread (extension).
hello_body_bytes_max = 1024
frame_length_prefix_bytes = 4
tag_size_bytes = 16
nonce_size_bytes = 16
credential_key_size_bytes = 32
master_key_size_bytes = 32             # each key of the master key file (AES-256, HMAC-SHA256)
master_key_file_size_bytes_max = 65536  # a larger file is no master key file
config_file_bytes_max = 1_048_576   # a larger file is no configuration (a path mistaken for it)
protocol_version = 1
hello_timeout_s = 10.0
frame_complete_timeout_s = 10.0    # a frame begun must be finished within this
idle_timeout_s = 120.0             # default, configurable
requests_in_flight_max = 64        # per connection; past it we stop reading

# --- Identifiers (docs/PROTOCOL.md §4.2, §4.7) ---
school_code_chars_max = 8          # 1..8 upper-case letters/digits (configuration)
id_str_chars_max = 64
request_type_chars_max = 32        # a longer `t` is no request's name: its reply says "error"
id_int_max = 2**64 - 1             # msgpack's largest unsigned int
int64_max = 2**63 - 1              # every other int a peer sends is an int64
hold_id_digits_max = 20            # `H` + txn: an int64 has at most 19 digits
message_nesting_depth_max = 6      # maps and lists inside a frame's map; offline is 3 deep
account_id_chars_max = 32
card_id_chars_min = 4
card_id_chars_max = 32
credential_id_chars_max = 64
source_chars_max = 64
batch_name_changes_said_max = 3    # what import-subsidies names of a batch name's odd characters
holder_chars_max = 64
cards_per_account_max = 32         # an account's cards, old ones included; all listed at once
pin_digits = 6
pin_failures_max = 5               # the 5th wrong PIN in a row locks

# --- Money (docs/PROTOCOL.md §4.6-4.7) ---
max_amount_fen = 10_000_000
# One offline record's amount, above which it is refused `bad_amount` (and logged): v1 applies
# offline records past every limit, so a stolen till key could upload any debt. The default
# is the range's top, no cap past max_amount_fen (v1's rule); a deployment sets it near its
# largest real tap.
offline_amount_max_fen = 100_000_000_000
default_no_pin_fen = 5_000
default_per_tx_fen = 50_000
default_daily_fen = 100_000
default_no_pin_max_fen = 20_000
default_per_tx_max_fen = 200_000
default_daily_max_fen = 500_000
balance_fen_max = 2**62            # far above any real balance; guards int64 overflow
# The most a credit or a subsidy grant may bring a purse to: half the maximum, so that the
# payments a reversal gives back (money that was in the purse before) always find room.
purse_fill_fen_max = balance_fen_max // 2

# --- QR payment codes (docs/PROTOCOL.md §5; fixed by the contract) ---
qr_step_s = 30                     # a code names its 30-second step; the step before and after pass
qr_nonce_chars = 8
qr_tag_chars = 20
qr_secret_size_bytes = 32          # a virtual card's secret (switch-side only)
# Housekeeping runs five passes a second (housekeeping_interval_s): each of its bounds per pass
# (these two, subsidies_expired_per_pass_max, meal_counts_forgotten_per_pass_max) is a fifth of
# what one pass a second had, so a backlog (after downtime, at a term's end) clears as fast as
# before in passes a fifth as long: the event loop serves no till while one runs.
# subsidy_grants_forgotten_per_pass_max bounds the index entries a pass visits, each a delete
# or two: a term's end for 30,000 students clears in 15 passes, three seconds.
qr_prune_keys_max = 2_000          # used-code records forgotten per housekeeping pass
holds_expired_per_pass_max = 1_000 # holds a housekeeping pass releases at most

# --- Retention and windows (docs/PROTOCOL.md §4.4, §4.8-4.10, §4.14) ---
idempotency_retention_s = 8 * 24 * 3600   # > offline_window_s + offline_future_s
# A `credit`'s id (a recharge's payment order number) is remembered this long, whatever the
# retention above: a recharge system that sends an order again from a month's or a year's
# reconciliation, or from its outbox restored from a backup, gets a replay, not a second
# credit. About 150 bytes a recharge: 30,000 students recharging weekly keep some 250 MB.
credit_ids_retention_s = 400 * 24 * 3600
# What is forgotten by age (remembered ids, subsidy grants, meal counts) is aged by a retention
# clock (ledger.state.retention_now_ms): it moves on with the time that really passes (a clock
# no one sets), is read capped by the wall clock, starts each run where the last one left it,
# and makes up what it was behind the wall clock at a start (a summer break, or a host booted
# ahead) at most this many times as fast; ids remembered before a start age from where the
# books stood at it at 1x (ledger.state.Ledger._id_cutoffs), so no wrong clock at a start
# or jump while running forgets one before its retention has really passed.
retention_clock_speed_max = 4
retention_clock_saved_every_s = 60
# A start this far past the books' newest record (or behind it) is logged for the operator.
clock_ahead_of_books_noticed_s = 120 * 24 * 3600
# A subsidy grant is kept this many days after its term is over in every time zone: an import
# run again from a reconciliation within it pays nothing twice, and a switch whose clock runs
# ahead by less (believed after a start or clock_jump_confirm_s) forgets no grant whose term
# still runs. About 60 bytes a grant: 30,000 students' monthly batches keep some 30 MB.
subsidy_grants_kept_s = 400 * 24 * 3600
# The retention sweep goes through every remembered id once in this long: a pass (five a
# second) visits the ids the database held at the cycle's start (or holds, if more) times
# housekeeping_interval_s over this, at least one. An id is kept at most the retention, two
# cycles and a minute; reading 20,000 ids a second whatever the campus held cost a
# saturated switch 1-2 µs a debit (bench/RESULTS.md, 2026-12-04 18:55), where 1.5 million
# ids need 2,500 a second for a cycle of 10 minutes.
idempotency_sweep_cycle_s = 600
# At most this many a pass, whatever the database holds: past 12 million ids the cycle grows
# as N / (5 x this) seconds, and the sweep keeps up while fewer than 20,000 ids are remembered
# a second (docs/RELIABILITY.md, idempotency retention). Small passes: the event loop serves
# no till while one runs.
idempotency_sweep_ids_per_pass_max = 4_000
reversal_window_s = 24 * 3600
hold_timeout_s = 30 * 60
offline_window_s = 7 * 24 * 3600
offline_records_max = 500
# An upload whose reply could outgrow a frame is refused before anything is applied: a result
# is its record's id plus at most this (keys, the longest code, txn, balance, flag, replay).
offline_result_bytes_max = 96
reply_envelope_bytes_max = 64      # t, code, re and the results' header around them
offline_future_s = 5 * 60          # an offline tap this far ahead of our clock is refused
# A card's lost periods kept (newest first kept): taps inside one are flagged after_lost at
# any upload (docs/PROTOCOL.md §4.10); a card lost and found more often loses its oldest.
card_lost_periods_kept_max = 8
history_limit_default = 50
history_limit_max = 200
# A page's items, packed, stay under this (the frame less its tag, envelope and time zone):
# 200 items of a till whose merchant and id are 64 emoji would not fit a frame, and the page
# ends early instead, with `next` to go on from (docs/PROTOCOL.md §4.14).
history_items_bytes_max = frame_size_bytes_max - 1_024
subsidy_batches_per_account_max = 64   # batches with money left on one account
subsidies_expired_per_pass_max = 1_000 # batches a housekeeping pass clears at most
# Due batches a pass may pass over because open holds stand on them (they lapse once the
# holds end, hold_timeout_s at most): up to this many at the head of the expiry index keep no
# other batch from lapsing in the same pass.
subsidies_kept_passed_per_pass_max = 4_000
subsidy_grants_forgotten_per_pass_max = 2_000   # past terms' grants a pass visits at most
rooms_limit_default = 50           # dorm rooms in one `rooms` page
rooms_limit_max = 200

# --- Blacklist (docs/PROTOCOL.md §4.13) ---
blacklist_changes_kept = 10_000    # per school; an older `since` gets the full list
# One page of the list must fit one frame whatever the ids: a 32-char id packs as 34 bytes
# (str 8), a reply's or push's envelope stays under 256 bytes, so at most
# (65,536 - 16 - 256) // 34 = 1,919 cards fit; the rest is margin.
blacklist_page_cards_max = 1_800   # cards in one reply or push; a bigger delta is paged as the full list
blacklist_delta_versions_max = 1_000  # a `since` further behind gets the full list (bounded work)
# After a restore the versions since the backup are given again to other changes: each
# school's version jumps past any a till can have seen since, and below it only the full list.
blacklist_restore_jump_version = 1_000_000_000

# --- Server (implementation choices) ---
connections_max = 12_000           # signed-on sessions; default, configurable
# Places past connections_max that only an admin credential's hello may take: whoever holds
# the others, an operator can still sign on to revoke them. The switch knows who connects
# only at hello, so sockets are accepted up to connections_max + this, and a hello that is
# not an admin's is refused there (closed without a frame, as past connections_max).
connections_admin_reserved_max = 4
# Sessions one credential may hold at once (defaults per role, configurable); its next hello
# is refused `busy`, so one key, stolen or misbehaving, cannot take every session. A till,
# a hot-water controller or a meter holds one, two while a connection it gave up on waits
# for its idle timeout; 16 leaves room for a canteen's readers sharing one key. A service
# keeps a pool of connections; the operators' command line opens one per command.
terminal_sessions_per_credential_max = 16
service_sessions_per_credential_max = 64
admin_sessions_per_credential_max = 16
# Sockets that have not said hello yet are bounded apart from sessions, so a flood of silent
# sockets cannot keep a till from signing on: past a bound the oldest of them is closed (if it
# has waited at least the eviction age; a till says hello within milliseconds), else the new one.
connections_pending_max = 1024
connections_pending_per_address_max = 256
connection_pending_evict_age_s = 1.0
listen_backlog = 4096
receive_size_bytes = 65536 + 4     # one receive can hold a whole max frame
# Reply bytes held for one connection: encoded and unsent, plus replies waiting for their
# commit (estimated). Past the first the peer is dropped (it does not read); past the second
# the switch stops reading from it until its replies go out.
send_buffer_bytes_max = 1024 * 1024
send_stall_timeout_s = 30.0              # unsent replies and no progress for this long: dropped
connection_reply_bytes_max = 512 * 1024
replies_bytes_total_max = 64 * 1024 * 1024  # over every connection: past it, none is read
reply_bytes_small = 512                  # the estimate for a reply of a type that stays small

# --- Request budget per credential (token bucket; defaults, configurable per role) ---
# A till pays a few times a minute and a recharge service a few hundred a second at the
# busiest; these are far above both, and far below what one credential could flood.
terminal_requests_per_s = 200
terminal_requests_burst = 1000
service_requests_per_s = 5000
service_requests_burst = 20000
admin_requests_per_s = 5000
admin_requests_burst = 20000
# A request whose work grows with what its sender asks for spends more of that budget
# (shell/budget.request_cost): an offline upload one a record (a record costs about a
# debit); a history or rooms page, or the whole blacklist, one more per this many records it
# may hold; a lost or found one more
# per this many tills its blacklist push goes to (a push is an encode and a tag, a twentieth
# of a debit's CPU).
page_records_per_request_cost = 20
# A card in the whole blacklist's page is a few bytes to pack: a full page of 1,800 costs
# about 20 debits' CPU (0.9 ms), not 1,800/20.
blacklist_cards_per_request_cost = 100
pushes_per_request_cost = 20
# A frame's body is decoded before its request can be judged: a frame over
# `frame_charged_over_bytes` first pays one request per `request_cost_frame_bytes` of it,
# or its session ends `busy` with it unread (64 KiB of tiny nested lists decodes in 12 ms; a
# smaller frame, read and answered `busy` unpaid past the budget, in 0.2 ms at most).
frame_charged_over_bytes = 1024
request_cost_frame_bytes = 512

# --- The switch's clock (switch/clock.py TrustedClock) ---
# A wall-clock reading further than this from (last trusted reading + monotonic time since) is
# a jump: logged, counted, and not believed. NTP slews and sub-second steps stay well inside.
clock_jump_s_max = 10.0
# A jumped clock that stays where it jumped to for this long was corrected, not broken: it is
# believed from then on. A jump corrected sooner never expires a hold or forgets an id.
clock_jump_confirm_s = 600.0

# --- Shell timers ---
housekeeping_interval_s = 0.2      # how often holds expire and old ids and QR codes are forgotten
drain_timeout_s = 10.0             # on SIGTERM, in-flight requests are answered within this
# A refused hello's error frame, and a session's last replies once the switch drains, are
# written within this (before a drain a closing session's replies have send_stall_timeout_s
# per progress, as any writer's).
error_flush_timeout_s = 5.0
# Then, before the socket closes, what the peer still sends is read and discarded (a close
# with unread bytes resets the connection and can destroy those last frames), up to:
close_linger_s = 2.0
close_linger_bytes_max = 1024 * 1024
# Then the store's close writes back what the logs hold: at most about 1.5 million writes at a
# million accounts, 4.3 s measured with a warm page cache (bench/replay_cost.py), 9.9 s in a
# run of record whose books were written just before (bench/RESULTS.md 2026-12-04 14:36).
# Not a bound (an LMDB write cannot be cut short): the time the unit's TimeoutStopSec
# (deploy/) allows for it, and a close slower than this is logged. One cut short loses
# nothing: the next open replays the logs.
store_close_s = 20.0
accept_pause_s = 0.1               # out of file descriptors: accepting waits this long
receives_between_checkpoints = 8   # hello path: receives that found data at once before yielding anyway
ready_connections_per_pass_max = 2048  # epoll events taken per pass of the poller
# A pass of the poller executes requests this long, then the committer has its turn; what
# is left runs first in the next pass.
pass_execute_s_max = 0.02
read_deadline_sweep_s = 1.0        # how often the poller ends reading past idle/frame deadlines

# Allocations between collections of Python's youngest generation (CPython's default: 700).
gc_young_objects_max = 20_000

# Every this many journal records of an account a history mark is kept, so a history page
# below any txn walks at most this many newer records of the account before its first item.
records_between_history_marks = 64

# --- Containment ---
failure_tracebacks_per_minute_max = 20  # more failures than this a minute are counted, not logged
# Lines a peer that has not signed on can cause (a refused hello, a socket refused or evicted
# before its hello), over all peers: more than this a minute are counted and said in one line
# a minute (`event=hello_refused_suppressed count=N`); the metrics count every one. A
# till with a wrong key retrying every few seconds stays well inside; a flood is one line a
# second at most, so journald's rate limit never drops the switch's other lines for it.
peer_events_logged_per_minute_max = 60
task_restart_delay_s = 0.1              # a supervised task that raised starts again after this

# --- Group commit ---
batch_requests_max = 4096          # requests gathered into one LMDB transaction
batch_wait_s = 0.0005              # how long the committer lets a batch fill at light load
# A request that may have waited longer than this for the switch to read it is answered `busy`
# instead of executed: past saturation the queue is shed, not kept (docs/PROTOCOL.md §2.3).
# Above a closed loop's natural wait (2,000 tills at depth 1 wait about 0.2 s each for their
# turn here), well below the seconds a queue past saturation grows to.
request_wait_max_s = 0.5
commit_retries_map_full_max = 8    # map growth attempts before a batch is failed
# Account records and remembered ids are logged by each commit and written back to their
# databases a round later, a slice per commit (persistence/writeback.py), each database in
# rounds of its own. A round ends once this many writes were logged to it (a debit logs one
# to each: its account and its id; a key written again counts again), or this many commits
# logged some, or the retention sweep asks. A write-back dirties about a page per till (ids)
# and per account leaf (records) per round, so it saves pages only where a round holds many
# writes of each: a bound by commits alone made rounds of a few ids a till at light load,
# and their slices cost more than the pages saved (open loop at 5,000/s: p99 1.5-3.3x). The
# bigger, the more memory (about 300 B a write, about a round at most: about 10 MB here; a
# large accounts table lengthens the accounts' round, below, never the ids').
logged_writes_max = 32_768
commits_between_write_backs_max = 4_096
# A large accounts table lengthens the accounts' round: to this many writes per record the
# table holds (both bounds above grow alike), at most `logged_writes_held_max`. At a million
# accounts a round of 32,768 writes rewrote about 14,000 of the table's 52,632 leaves, nearly
# a leaf a debit, each copied, written and fsync'd: 8 µs a debit more than at 10,000
# accounts, where every round rewrites the same few hundred leaves (bench/RESULTS.md,
# 2026-12-03 19:13). A round as long as the table rewrites each leaf about once instead: 0.6
# a record is the accounts' part of the round ids and accounts shared at one write a record
# (about 600,000 debits, 450,000 accounts, at a million). Below 54,614 records nothing
# changes.
logged_writes_per_account_ratio = 0.6
# The most writes a round holds, whatever the table's size. The logs hold up to about 1.5
# times a round of each database (the round being written back, and the next one filling
# until it is: at a million accounts about 900,000 account writes and 50,000 ids; 1.47
# million writes when ids shared the accounts' round), and an open after a crash replays
# them (about 5 s for 1.47 million; bench/replay_cost.py, bench/RESULTS.md 2026-12-04
# 13:29). Memory holds about a round at most: a slice's keys and values leave it once
# committed (the round's dict tables and its sort's entries, about 64 B a write, stay until
# the round ends; at a million accounts the
# switch's own memory at its peak 229 MiB with the ids in rounds of their own, 386 when they
# shared the accounts' round, 481 when a round left memory only at its end, 68 with the
# short rounds; bench/RESULTS.md 2026-12-04 16:24 and 20:47).
logged_writes_held_max = 1_048_576
# A commit writes back at least this many of the previous round's writes (and at least twice
# what it logs itself, so a round is written back before the next one fills).
written_back_per_commit_min = 256
# A round's keys are put in key order (for the write-back) this many at a time, a run a
# commit, then merged (switch/persistence/_key_order.pyx): a million keys sorted at once held
# the event loop 0.4 s in Python, and popped from a heap cost it 1.4 µs a key. A run of this
# size takes about 9 ms (an introsort: an order a till makes against it costs no more); a
# round's write-back starts once its last run is sorted, 16 commits in at most for a round of
# a million keys.
key_order_sorted_per_commit_max = 65_536
# A retention sweep that reached the last id asks for a write-back at most this often, so the
# ids of a quiet switch reach the database it walks (a busy one writes back by the bounds).
ids_write_back_asked_every_s = 60
# The sweep's position is saved with a batch that already holds writes, and otherwise at most
# this often (a commit each time on an idle switch): a restart goes on from it, at most this
# far behind.
ids_sweep_position_saved_every_s = 10

# --- Storage ---
lmdb_map_initial_size_bytes = 256 * 1024 * 1024
lmdb_map_growth_factor = 2
lmdb_map_grow_threshold_ratio = 0.75   # a commit that leaves the map this full grows it
# Named databases an environment may open: every one of store.DATABASES, plus the retired ones
# an upgrade opens to drop (32 exactly from schema 9 on, when this was 32: an upgrade from schema 4
# or older would have failed at the next database added). Each costs a few bytes a handle.
lmdb_max_dbs = 48
lmdb_max_readers = 126

# --- Audit ---
audit_discrepancies_shown_max = 20  # the rest are counted

# --- Downstream forwarding (docs/PROTOCOL.md §6.3) ---
forward_records_per_frame_max = 256     # records in one `records` frame
forward_records_bytes_max = 60_000      # their msgpack size; the rest of 65,536 is header and tag
forward_scan_txns_max = 1024            # txns read for one frame (a filter may skip them all)
forward_connect_timeout_s = 5.0
forward_reply_timeout_s = 10.0          # hello reply and each `records` reply
forward_backoff_initial_s = 0.05        # reconnect delay, doubled per failure, with jitter
forward_backoff_max_s = 5.0
forward_position_kick_interval_s = 1.0  # at most this long before an idle switch commits a position
forward_unsolicited_frames_max = 16     # frames other than the reply (pushes) while one is awaited
# A rewind this long after the one before starts a new run: its count (which rewind lines are
# logged) and its back-off (the wait before the next frame) start again.
forward_rewind_run_gap_s = 60.0

# --- Reference receivers (switch/receivers/) ---
# Sockets before `hello`; past it the oldest is closed, so silent sockets cannot lock the
# switch out. Signed-on sessions need no bound of their own: one per credential, a new
# sign-on replaces the old one.
receiver_pending_connections_max = 16
receiver_silent_sessions_max = 4   # per credential: signed on, no request sent yet
stale_readers_checked_every_s = 60.0   # LMDB reader slots of dead processes freed this often
receiver_hello_nonces_kept_max = 4_096
# Hellos' nonces remembered (credential, nonce: about 250 bytes each): a copy of one that
# signed on is refused `unauthenticated`.
hello_nonces_kept_max = 100_000
# A session this young that has sent no request yet is not closed to make room for a hello.
silent_session_grace_s = 5.0
# Room a restore leaves in the copy's map for the one count it writes there.
restore_map_headroom_bytes = 16 * 1024 * 1024
# A receiver logs its refused hellos the 1st, 2nd, 4th ... time in each such window: a flood is
# a few lines, and a wrong key that keeps retrying after one is still seen each window.
receiver_hellos_refused_window_s = 60.0
receiver_idle_timeout_s = 3600.0
receiver_day_segments_max = 4096        # billing: txn -> local day map kept for reversals
receiver_pending_credits_max = 1024     # utility: credits to accounts not yet known as rooms
receiver_rewind_kinds_max = 64          # record kinds a receiver's rewind check remembers taking
# A record's `at` (and `tapped_at`) outside this range is refused: any time in it is a
# valid local date in every time zone, so turning it into a day never raises.
receiver_time_ms_min = 0                          # 1970-01-01 UTC
receiver_time_ms_max = 32_503_680_000_000         # 3000-01-01 UTC

# --- Logs ---
log_peer_value_chars_max = 80           # a value a peer chose (a refused hello's `who`), cut
# An option given twice is refused with its second value shown (config/command_line.py): a
# path in full, a pasted blob cut.
command_line_value_shown_chars_max = 200

# --- Metrics endpoint (--metrics) ---
metrics_exposition_age_s_max = 1.0      # a scrape gets an exposition at most this old
# Open HTTP connections; a new one past it closes the oldest still sending its request head,
# else the oldest of all, so sockets held open cannot lock the scraper out.
metrics_connections_max = 8
metrics_request_bytes_max = 8192        # an HTTP request head
metrics_request_head_timeout_s = 1.0    # request line and headers in by then, or closed
metrics_connection_timeout_s = 5.0      # a connection's whole life, request to last byte out

# --- Performance target (bench/run_e2e.py reports against it; the demo draws it) ---
p99_latency_target_ms = 25.0            # at an offered 10,000 tx/s, open loop (the issue's)

# --- Operator command line (switch/admin_cli.py) ---
cli_connect_timeout_s = 10.0            # connect and sign on
cli_reply_timeout_s = 60.0              # one request, or one pipelined batch of an import
cli_import_pipeline_depth_max = 64      # requests in flight while importing (the switch's cap)
# A request a client pipelines (an import, the benchmark's provisioning) answered `busy` did
# nothing (past the credential's request budget, or an overloaded switch): it is sent again
# after a pause that doubles from the first to the longest, until the pauses add up to the
# wait bound; then its `busy` reply stands (switch/shell/client.py `pipeline_through_busy`).
client_busy_pause_first_s = 0.05
client_busy_pause_longest_s = 2.0
client_busy_wait_s_max = 120.0
cli_import_rows_max = 1_000_000

# --- Configuration ranges (switch/config.py): the (lowest, highest) a configured value may
# take; outside it the switch refuses to start, naming the key. ---
idle_timeout_s_range = (1.0, 86_400.0)
hold_timeout_s_range = (60, 86_400)
reversal_window_s_range = (60, 30 * 24 * 3600)        # and at most idempotency_retention_s
offline_window_s_range = (60, 30 * 24 * 3600)         # and at most idempotency_retention_s
idempotency_retention_s_range = (3600, 366 * 24 * 3600)
max_amount_fen_range = (1, 100_000_000_000)
offline_amount_max_fen_range = (1, 100_000_000_000)
batch_requests_max_range = (1, 65_536)
batch_wait_s_range = (0.0, 0.1)
request_wait_max_s_range = (0.01, 60.0)
connections_max_range = (1, 1_000_000)
terminal_sessions_per_credential_max_range = (1, 1_000_000)
service_sessions_per_credential_max_range = (1, 1_000_000)
admin_sessions_per_credential_max_range = (1, 1_000_000)
school_limit_fen_range = (1, 100_000_000_000)          # per_tx, daily and their maxima
school_no_pin_fen_range = (0, 100_000_000_000)         # 0: every card payment needs the PIN
school_name_chars_range = (1, 64)
meals_per_school_max = 8                               # [[schools.X.meals]] tables
meal_counts_forgotten_per_pass_max = 2_000            # past periods' counts a pass forgets
meal_name_chars_range = (1, 32)
meal_taps_max_range = (1, 1_000)                       # payments in one meal period
meal_fen_max_range = (1, 100_000_000_000)
# A meal's cap below this is logged at start (config questionable_settings): under a yuan a
# meal is no canteen's price; a cap written in yuan (30 for 30 yuan) refuses nearly every tap.
meal_cap_questioned_below_fen = 100
# A limit on whole payments below this (10 yuan) is logged at start as likely written in
# yuan where fen is meant: a canteen meal costs more.
payment_limit_questioned_below_fen = 1000
repeat_tap_window_s_range = (0, 300)                   # 0: the double-tap guard is off
building_digits_range = (1, 8)                         # split_buildings: "9", "12"
terminal_requests_per_s_range = (0.1, 1_000_000.0)
terminal_requests_burst_range = (1, 10_000_000)
service_requests_per_s_range = (0.1, 1_000_000.0)
service_requests_burst_range = (1, 10_000_000)
admin_requests_per_s_range = (0.1, 1_000_000.0)
admin_requests_burst_range = (1, 10_000_000)
