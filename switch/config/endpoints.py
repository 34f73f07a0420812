"""HOST:PORT as operators type it, and the one line to tell them when it cannot be bound or
reached: every command line and the configuration read addresses through here."""

import argparse
import errno
import socket

PORT_MAX = 65535

# Where `serve` exposes metrics unless told otherwise. Not 9100 (the node exporter, which
# Debian's `prometheus` package recommends) nor anything in 9100-9999: Prometheus's list of
# default exporter ports has given out that whole range. Not 9090-9094 (Prometheus,
# Pushgateway, Alertmanager) nor 8000/8080 (web servers, client-library examples) either.
# 7090 sits beside the switch's own 7000 and is on none of those lists.
METRICS_DEFAULT = ("127.0.0.1", 7090)
METRICS_OFF = "off"

# What to do about the errors an operator can cause, by errno.
_HINTS = {
    errno.EADDRINUSE: "the port is in use by another process; stop it, or choose another port "
                      "(0: any free port)",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.ECONNREFUSED: "connection refused: is the switch running, and on this port?",
    errno.EHOSTUNREACH: "host unreachable: check the address",
    errno.ENETUNREACH: "network unreachable: check the address",
    errno.ETIMEDOUT: "timed out: check the address and that the switch is running",
}


def parse_host_port(text: str, port_min: int = 0) -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[v6]:PORT"; ValueError says what is expected."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    # isdigit alone would take full-width digits (１２), which int() then reads as 12.
    if (not host or not host.isprintable() or any(c.isspace() for c in host)
            or not port.isascii() or not port.isdigit() or not port_min <= int(port) <= PORT_MAX):
        raise ValueError(f"expected \"HOST:PORT\" with a port {port_min}..{PORT_MAX}, got {text!r}")
    return host, int(port)


def host_port_argument(port_min: int = 0):
    """An argparse `type` for HOST:PORT (argparse prints our message, not a generic one)."""
    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_host_port(text, port_min)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = "HOST:PORT"
    return parse


def metrics_argument():
    """An argparse `type` for --metrics: HOST:PORT, or `off` (None)."""
    host_port = host_port_argument()

    def parse(text: str) -> tuple[str, int] | None:
        return None if text == METRICS_OFF else host_port(text)
    parse.__name__ = "HOST:PORT or off"
    return parse


def explain(error: OSError, doing: str) -> str:
    """One line for an operator: `cannot <doing>: <what is wrong and what to do>`."""
    cause = _root_cause(error)
    if isinstance(cause, socket.gaierror):
        return f"cannot {doing}: unknown host (check its spelling)"
    hint = _HINTS.get(cause.errno) or cause.strerror or str(cause)
    return f"cannot {doing}: {hint}"


def _root_cause(error: BaseException) -> OSError:
    """The OSError with an errno behind trio's "all attempts to connect failed" wrappers."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno is not None
                                          or isinstance(seen, socket.gaierror)):
            return seen
        group = getattr(seen, "exceptions", None)
        if group:
            seen = group[0]
        else:
            seen = seen.__cause__ or seen.__context__
    return error
