"""Command line: `python -m switch serve|audit|closed-taps|demo` (docs/PROTOCOL.md §7)."""

import argparse
import logging
import sys

import trio

from switch import limits
from switch.config.endpoints import explain, host_port_argument


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class StartError(Exception):
    """The switch cannot start; the message is the one line the operator sees."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m switch",
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
    serve.add_argument("--metrics", type=host_port_argument(),
                       help="HOST:PORT for Prometheus metrics")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    audit = commands.add_parser("audit", help="check the books of a data dir")
    audit.add_argument("--data", required=True)
    taps = commands.add_parser("closed-taps", help="list offline taps refused account_closed "
                               "(money to collect by hand)")
    taps.add_argument("--data", required=True)
    from switch.cli import admin
    admin.add_parser(commands)
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
                             ) from None
    return listeners, metrics_listeners


async def _serve(args) -> int:
    from switch.clock import SystemClock
    from switch.config import load_config
    from switch.cli.datadir import ADMIN_KEY_FILE, DataDirClaim, check_data_dir
    from switch.ledger import Ledger
    from switch.shell.metrics import serve_metrics
    from switch.shell.server import Server
    from switch.shell.transport import open_listeners

    config = load_config(args.config)
    check_data_dir(args.data, args.init)
    listeners, metrics_listeners = await _bind(args)
    store = claim = None
    try:
        claim = DataDirClaim(args.data, args.init)
        store = _open_store(claim)
        if claim.new:
            logging.getLogger("switch").info("event=initialised data=%s key_file=%s",
                                             args.data, ADMIN_KEY_FILE)
        ledger = Ledger(store, config, SystemClock())
        server = Server(store, ledger, config, SystemClock())
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
        store.close()
        claim.release()
    logging.getLogger("switch").info("event=stopped last_txn=%d", store.last_txn)
    return 0


def _open_store(claim):
    import lmdb

    from switch.persistence.store import SchemaMismatch
    try:
        return claim.open_store()
    except (lmdb.Error, SchemaMismatch, OSError) as error:
        raise StartError(f"cannot open the data dir {claim.path}: {error}") from None


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
        logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                            format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
                            stream=sys.stderr)
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
    if args.command == "closed-taps":
        return _print_closed_taps(args.data)
    if args.command == "admin":
        from switch.cli import admin
        return admin.run(args)
    if args.command == "demo":
        from switch.cli.demo import run_demo
        return run_demo(args.data)
    return 2


def _print_closed_taps(data_dir: str) -> int:
    import time

    from switch.cli.admin import fen_to_yuan
    from switch.cli.datadir import is_data_dir
    from switch.persistence.audit import closed_account_taps
    if not is_data_dir(data_dir):
        print(f"error: {data_dir} is not a switch data dir; check the path", file=sys.stderr)
        return 2
    total_fen = count = 0
    print(f"{'tapped at (UTC)':19}  {'account':16} {'card':16} {'yuan':>10}  terminal  id")
    for tap in closed_account_taps(data_dir):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(tap["at"] / 1000))
        print(f"{when}  {tap['account']:16} {tap['card']:16} {fen_to_yuan(tap['amount']):>10}"
              f"  {tap['who']}  {tap['id']}")
        total_fen += tap["amount"]
        count += 1
    print(f"{count} taps, {fen_to_yuan(total_fen)} yuan to collect by hand")
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
