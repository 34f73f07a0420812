"""Every bound and default of the simulator, named once, units last."""

terminals_default = 2_000
terminals_max = 10_000
terminals_min = 8                  # at least one of each kind in each school
students_default = 2_000
students_max = 20_000
seconds_default = 30.0
seconds_max = 3_600.0
rate_default_per_s = 2_000.0

requests_in_flight_max = 64        # the switch's cap per connection (docs/PROTOCOL.md §2.3)
provision_pipeline_depth = 64
provision_connections = 4
balance_check_connections = 4
receive_size_bytes = 65_536 + 4
connect_concurrency_max = 200      # hellos under way at once in the first sign-on
connect_timeout_s = 10.0
connect_phase_timeout_s = 120.0
reconnect_backoff_initial_s = 0.05
reconnect_backoff_max_s = 0.5
busy_retry_s = 0.02                # a `busy` reply is retried with the same id after this
drain_timeout_s = 30.0             # after the load, for replies still in flight
backlog_per_terminal_max = 10_000  # open loop: arrivals waiting for a free slot
offline_queue_per_terminal_max = 100_000
offline_records_per_upload_max = 500   # docs/PROTOCOL.md §4.10
switch_ready_timeout_s = 30.0
switch_stop_timeout_s = 30.0
hard_deadline_extra_s = 180.0      # beyond --seconds: provisioning, sign-on, drain, checks
progress_interval_s = 1.0
latency_lowest_us = 1
latency_highest_us = 3_600_000_000
latency_significant_digits = 3
mismatches_shown_max = 20
