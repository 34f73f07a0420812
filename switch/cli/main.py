"""Command line: `python -m switch serve|audit|backup|restore|closed-taps|admin|
rotate-master-key|demo` (docs/PROTOCOL.md §7)."""

import argparse
import errno
import logging
import os
import sys
import time

import trio

from switch import limits, logline
from switch.config.command_line import CommandLineParser
from switch.config.endpoints import (METRICS_DEFAULT, METRICS_OFF, explain, host_port_argument,
                                     metrics_argument)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StartError(Exception):
    """The switch cannot start; the message is the one line the operator sees."""


def _parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(prog="python -m switch",
                               description="Campus one-card transaction switch")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the switch")
    serve.add_argument("--data", required=True,
                       help="data dir (an empty directory is initialised; a missing one only "
                            "with --init)")
    serve.add_argument("--init", action="store_true",
                       help="create the data dir when it does not exist")
    serve.add_argument("--listen", required=True, type=host_port_argument(),
                       help="HOST:PORT, port 0 = any")
    serve.add_argument("--metrics", type=metrics_argument(), default=METRICS_DEFAULT,
                       help=f"HOST:PORT for Prometheus metrics (default "
                            f"{METRICS_DEFAULT[0]}:{METRICS_DEFAULT[1]}; port 0 = any), or "
                            f"{METRICS_OFF}")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--master-key", metavar="PATH",
                       help="the data dir's master key file (default: the data dir's path with "
                            ".key appended; never inside the data dir)")
    serve.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    audit = commands.add_parser("audit", help="check the books of a data dir")
    audit.add_argument("--data", required=True)
    taps = commands.add_parser("closed-taps", help="list offline taps refused account_closed "
                               "(money to collect by hand)")
    taps.add_argument("--data", required=True)
    taps.add_argument("--after", type=_received_after, default=0, metavar="RECEIVED_MS",
                      help="only those received after this (the number the last listing "
                           "ended with): what was collected is not listed again")
    rotate = commands.add_parser(
        "rotate-master-key", help="give the master key file a new key and seal every secret "
                                  "again under it (no switch running)")
    rotate.add_argument("--data", required=True)
    rotate.add_argument("--master-key", metavar="PATH",
                        help="the master key file (default: the data dir's path + .key)")
    from switch.cli import admin, backup
    admin.add_parser(commands)
    backup.add_parsers(commands)
    demo = commands.add_parser("demo", help="start a switch and run a scripted lunch queue")
    demo.add_argument("--data", help="data dir to use (default: a fresh temporary one)")
    return parser


async def _bind(args) -> tuple[list, list]:
    """The listening sockets (switch, metrics); bound before the data dir is touched, so a
    port in use leaves a new data dir uncreated."""
    from switch.shell.transport import open_listeners

    host, port = args.listen
    try:
        listeners = open_listeners(host, port, limits.listen_backlog)
    except OSError as error:
        raise StartError(explain(error, f"listen on {host}:{port}")) from None
    metrics_listeners = []
    if args.metrics:
        metrics_host, metrics_port = args.metrics
        try:
            metrics_listeners = await trio.open_tcp_listeners(metrics_port, host=metrics_host)
        except OSError as error:
            for sock in listeners:
                sock.close()
            raise StartError(explain(error, f"serve metrics on {metrics_host}:{metrics_port}")
                             + f" (--metrics HOST:PORT, or --metrics {METRICS_OFF})") from None
    return listeners, metrics_listeners


def _close_store(store) -> None:
    """Close the store (writing back what its logs hold), saying so if that took longer than
    the unit's TimeoutStopSec allows for it."""
    closing = time.monotonic()
    store.close()
    closed_in_s = time.monotonic() - closing
    if closed_in_s > limits.store_close_s:
        logging.getLogger("switch").warning(
            "event=slow_close seconds=%.1f bound_s=%g hint=%s", closed_in_s,
            limits.store_close_s, "a stop this slow may meet the service manager's "
            "TimeoutStopSec; one cut short loses nothing, the next start replays the logs")


async def _serve(args) -> int:
    from switch.clock import TrustedClock
    from switch.config import load_config
    from switch.cli.datadir import (ADMIN_KEY_FILE, DataDirClaim, check_data_dir,
                                    check_schools_declared)
    from switch.ledger import Ledger
    from switch.shell.metrics import serve_metrics
    from switch.shell.server import Server

    config = load_config(args.config)
    _log_questionable_settings(config)
    master_key_file = args.master_key or config.master_key_file
    check_data_dir(args.data, args.init, master_key_file)
    listeners, metrics_listeners = await _bind(args)
    store = claim = None
    try:
        claim = DataDirClaim(args.data, args.init, master_key_file)
        store = _open_store(claim)
        if claim.new:
            logging.getLogger("switch").info(
                "event=data_dir_created data=%s admin_key=%s", os.path.abspath(args.data),
                os.path.abspath(os.path.join(args.data, ADMIN_KEY_FILE)))
        check_schools_declared(store, config.schools)
        clock = TrustedClock()   # one clock: hello's `time` agrees with the journal's
        ledger = Ledger(store, config, clock)
        server = Server(store, ledger, config, clock)
        _quiet_collector()
    except BaseException:
        if store is not None:
            store.close()
        if claim is not None:
            claim.abandon()
        for sock in listeners:
            sock.close()
        for listener in metrics_listeners:
            await listener.aclose()
        raise
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_drain_on_signal, server)
            if metrics_listeners:
                await nursery.start(serve_metrics, server.metrics, metrics_listeners)

            async def run_until_drained(task_status=trio.TASK_STATUS_IGNORED):
                await server.serve(listeners, task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(run_until_drained)
            bound_host, bound_port = listeners[0].getsockname()[:2]
            print(f"listening on {bound_host}:{bound_port}", flush=True)
            if metrics_listeners:
                metrics_bound = metrics_listeners[0].socket.getsockname()[:2]
                print(f"metrics on {metrics_bound[0]}:{metrics_bound[1]}", flush=True)
    finally:
        _close_store(store)
        claim.release()
    logging.getLogger("switch").info("event=stopped last_txn=%d", store.last_txn)
    return 0


def _log_questionable_settings(config) -> None:
    from switch.config import questionable_settings

    for fields in questionable_settings(config):
        logging.getLogger("switch").warning(
            "event=config_questionable " + " ".join(f"{key}=%s" for key in fields),
            *fields.values())


def _quiet_collector() -> None:
    """Python's cycle collector, tuned for a process that allocates per request and frees
    almost all of it by reference counting: what startup built is frozen out of its scans
    (a full scan of it stalled every till for ~0.1 s), and the young generation is
    collected every `gc_young_objects_max` allocations instead of every 700."""
    import gc
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(limits.gc_young_objects_max, middle, old)


def _open_store(claim):
    import lmdb

    from switch.config.masterkey import MasterKeyError
    from switch.persistence.store import SchemaMismatch
    from switch.persistence.writeback import DamagedLog
    try:
        return claim.open_store()
    except MasterKeyError as error:
        raise StartError(str(error)) from None
    except (lmdb.Error, SchemaMismatch, DamagedLog, OSError) as error:
        hint = _out_of_space_hint(error, claim.path, "start again (nothing committed is lost)")
        raise StartError(f"cannot open the data dir {claim.path}: {error}{hint}") from None


def _out_of_space_hint(error: Exception, data_dir: str, then: str) -> str:
    """What to do when the disk is full. LMDB reports ENOSPC only in its message (its own
    error classes have no errno); even opening writes, since it writes back the logs. The
    full disk is the one of the file named, when the error names one (the key file may be
    elsewhere), else the data dir's."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or (
            "No space left on device" in str(error)):
        place = getattr(error, "filename", None) or data_dir
        return f"; the disk that holds {place} is full: free space there, then {then}"
    return ""


async def _drain_on_signal(server, task_status=trio.TASK_STATUS_IGNORED):
    import signal
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            logging.getLogger("switch").info("event=draining signal=%d", signum)
            server.drain()
            return


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logline.configure(args.log_level)
        from switch.config import ConfigError
        from switch.cli.datadir import DataDirError
        from switch.persistence.dirlock import DirInUse
        try:
            return trio.run(_serve, args)
        except ConfigError as error:
            print(f"configuration error: {error}", file=sys.stderr)
            return 2
        except (StartError, DataDirError, DirInUse) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.command == "audit":
        from switch.persistence.audit import audit
        report = audit(args.data)
        if report.unreadable:
            print(f"error: {report.unreadable}", file=sys.stderr)
            return 2
        print(report.summary())
        return 0 if report.sound else 1
    if args.command in ("backup", "restore"):
        from switch.cli import backup
        logline.configure("INFO")
        return backup.run(args)
    if args.command == "rotate-master-key":
        return _rotate_master_key(args)
    if args.command == "closed-taps":
        return _print_closed_taps(args.data, args.after)
    if args.command == "admin":
        from switch.cli import admin
        return admin.run(args)
    if args.command == "demo":
        from switch.cli.demo import run_demo
        if args.data and os.path.exists(args.data) and (
                not os.path.isdir(args.data) or os.listdir(args.data)):
            # The demo opens its own tills, pays, and moves the forwarding positions to its
            # throwaway receivers: on a real data dir, records the real ones never get.
            print(f"error: --data {args.data}: the demo writes its lunch rush into the books "
                  f"it is given; name a new or empty directory, or leave --data out",
                  file=sys.stderr)
            return 2
        return run_demo(args.data)
    return 2


def _rotate_master_key(args) -> int:
    import lmdb

    from switch.cli.datadir import DataDirError, rotate_master_key
    from switch.config.masterkey import MasterKeyError
    from switch.persistence.dirlock import DirInUse
    from switch.persistence.store import SchemaMismatch
    from switch.persistence.writeback import DamagedLog
    try:
        counts = rotate_master_key(args.data, args.master_key)
    except (DataDirError, MasterKeyError, DirInUse, SchemaMismatch, DamagedLog) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (lmdb.Error, OSError) as error:
        # Each step of the rotation leaves a key file that opens everything (rotate_master_key),
        # so once the cause is put right the operator runs it again; nothing is half-sealed.
        hint = _out_of_space_hint(error, args.data, "run the same command again")
        then = "" if hint else ", and once the cause is put right the same command finishes it"
        print(f"error: the master key rotation did not finish: {error}{hint}; the key file "
              f"still opens every secret{then}", file=sys.stderr)
        return 2
    print("master key rotated; sealed again: " + ", ".join(
        f"{count} {name}" for name, count in counts.items() if name != "accounts")
        + "; back up the new key file now: backups made before need the old one")
    return 0


def _print_closed_taps(data_dir: str, after_ms: int = 0) -> int:
    import time

    import lmdb

    from switch.cli.admin import fen_to_yuan
    from switch.cli.datadir import is_data_dir
    from switch.persistence.access import permission_problem
    from switch.persistence.audit import closed_account_taps
    if not is_data_dir(data_dir):
        said = permission_problem(data_dir) or f"{data_dir} is not a switch data dir; check the path"
        print(f"error: {said}", file=sys.stderr)
        return 2
    total_fen = count = last_ms = 0
    try:
        taps = [tap for tap in closed_account_taps(data_dir) if tap["received_at"] > after_ms]
    except lmdb.Error as error:     # as audit says it: one line, nothing printed before it
        print(f"error: cannot read {data_dir}: {error}", file=sys.stderr)
        return 2
    print(f"{'tapped at (UTC)':19}  {'account':16} {'card':16} {'yuan':>10}  terminal  id")
    for tap in taps:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(tap["at"] / 1000))
        print(f"{when}  {tap['account']:16} {tap['card']:16} {fen_to_yuan(tap['amount']):>10}"
              f"  {tap['who']}  {tap['id']}")
        total_fen += tap["amount"]
        count += 1
        last_ms = max(last_ms, tap["received_at"])
    since = f" received after {after_ms}" if after_ms else ""
    print(f"{count} taps{since}, {fen_to_yuan(total_fen)} yuan to collect by hand")
    if count:
        # Uploaded in received order: the next collection starts past the last listed.
        print(f"next time: closed-taps --data {data_dir} --after {last_ms}")
    return 0


def _received_after(text: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time in ms; give the number the "
                                         f"last listing ended with")
    return int(text)


def run() -> None:
    # A terminal that cannot show a holder's or merchant's Chinese name gets escapes, not a
    # traceback printed after the request was done.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        status = main()
    except KeyboardInterrupt:
        # Ctrl-C of a backup, restore or audit: each undoes its own half-made work on the way
        # out; a traceback would read as a failure of the switch's.
        print("error: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    run()
