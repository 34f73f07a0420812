"""Command line: `python -m switch serve|audit|demo` (docs/PROTOCOL.md §7)."""

import argparse
import logging
import sys

import trio

from switch import limits


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m switch",
                                     description="Campus one-card transaction switch")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the switch")
    serve.add_argument("--data", required=True, help="data dir (initialised when empty)")
    serve.add_argument("--listen", required=True, type=_host_port, help="HOST:PORT, port 0 = any")
    serve.add_argument("--metrics", type=_host_port, help="HOST:PORT for Prometheus metrics")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--log-level", default="INFO")
    audit = commands.add_parser("audit", help="check the books of a data dir")
    audit.add_argument("--data", required=True)
    from switch import admin_cli
    admin_cli.add_parser(commands)
    demo = commands.add_parser("demo", help="start a switch and run a scripted lunch queue")
    demo.add_argument("--data", help="data dir to use (default: a fresh temporary one)")
    return parser


async def _serve(args) -> int:
    from switch.clock import SystemClock
    from switch.config import load_config
    from switch.datadir import open_data_dir
    from switch.ledger import Ledger
    from switch.shell.metrics import serve_metrics
    from switch.shell.server import Server
    from switch.shell.transport import open_listeners

    config = load_config(args.config)
    store = open_data_dir(args.data)
    try:
        ledger = Ledger(store, config, SystemClock())
        server = Server(store, ledger, config, SystemClock())
        host, port = args.listen
        listeners = open_listeners(host, port, limits.listen_backlog)
        async with trio.open_nursery() as nursery:
            await nursery.start(_drain_on_signal, server)
            if args.metrics:
                metrics_host, metrics_port = args.metrics
                metrics_listeners = await trio.open_tcp_listeners(metrics_port, host=metrics_host)
                await nursery.start(serve_metrics, server.metrics, metrics_listeners)

            async def run_until_drained(task_status=trio.TASK_STATUS_IGNORED):
                await server.serve(listeners, task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(run_until_drained)
            bound_host, bound_port = listeners[0].getsockname()[:2]
            print(f"listening on {bound_host}:{bound_port}", flush=True)
            if args.metrics:
                metrics_bound = metrics_listeners[0].socket.getsockname()[:2]
                print(f"metrics on {metrics_bound[0]}:{metrics_bound[1]}", flush=True)
    finally:
        store.close()
    logging.getLogger("switch").info("event=stopped last_txn=%d", store.last_txn)
    return 0


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
        try:
            return trio.run(_serve, args)
        except ConfigError as error:
            print(f"configuration error: {error}", file=sys.stderr)
            return 2
    if args.command == "audit":
        from switch.audit import audit
        report = audit(args.data)
        print(report.summary())
        return 0 if report.sound else 1
    if args.command == "admin":
        from switch import admin_cli
        return admin_cli.main(args)
    if args.command == "demo":
        from switch.demo import run_demo
        return run_demo(args.data)
    return 2


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
