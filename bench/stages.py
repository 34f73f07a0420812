"""CPU per request of each stage a debit passes through, measured apart in one process.

    .venv/bin/python bench/stages.py --json-out bench/results/stages.json

Stages (each the best of --repeats runs, CPU time from `time.process_time()`, which counts
this process's user+system time and not the time it waits for the CPU or the disk, so a
shared, busy machine disturbs it far less than wall time):

- codec: the switch's side of the wire codec for one debit, `ServerSession.receive_request`
  (tag check, msgpack decode, seq check) and `encode_reply` (msgpack encode, tag) of its
  reply. The client's frames are made before the clock starts.
- sockets: one request frame and its reply through loopback TCP on non-blocking sockets, in
  rounds over --connections connections (one frame per send, as depth-1 tills send) and over
  one connection with --pipeline frames per send (replies coalesced). Both ends run in this
  process, so the server's share is taken as half of the total (each end does one send and
  one receive per exchange, of frames of about the same size).
- ipc: a batch of decoded requests (credential id + message) sent as one msgpack frame over a
  Unix socket to a forked echo process that decodes it and answers a batch of replies: what
  splitting network processes from a ledger process would add per request, both ends' CPU.
- execute: `dispatch.execute` of a debit by a terminal on a ledger over a temporary data dir
  (accounts, cards and terminals written by bench/e2e_load.py's prebuild), fake clock.
- commit: `Store.write_batch` of the writes --batch debits left (CPU, and wall time with the
  fsync), per debit; and the CPU of a whole commit (seal, write, reading on) at each of
  --commit-batches debits per batch: a commit's fixed part is what a light load pays most.

Speed is measured here, never asserted in a test. Writes JSON with every run's figure.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time

import msgpack

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
for path in (str(REPO), str(BENCH)):
    if path not in sys.path:
        sys.path.insert(0, path)

import e2e_load  # noqa: E402
from switch.clock import FakeClock  # noqa: E402
from switch.cli.datadir import open_data_dir  # noqa: E402
from switch.codec import ClientSession, ServerSession  # noqa: E402
from switch.config import load_config  # noqa: E402
from switch.ledger import Ledger, dispatch  # noqa: E402
from switch.persistence import writeback  # noqa: E402

TAG = "5A"          # card ids are hex: the tag is their first digits
KEY = bytes(range(32))
RECEIVE_SIZE_BYTES = 1 << 20
IPC_CHILD_TIMEOUT_S = 60.0
COMMIT_COST_DEBITS = 4_000   # debits executed per batch size of the commit-cost runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="debits per codec run")
    parser.add_argument("--repeats", type=int, default=7, help="runs per stage; the best counts")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--terminals", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1_000,
                        help="debits per commit (the switch's mean group commit was ~1,000)")
    parser.add_argument("--commit-batches", type=str, default="10,50,200,1000",
                        help="debits per commit for the commit-cost-by-batch-size runs "
                             "(a light load commits small batches)")
    parser.add_argument("--connections", type=int, default=200, help="sockets: depth-1 case")
    parser.add_argument("--pipeline", type=int, default=100, help="sockets: frames per send")
    parser.add_argument("--ipc-batches", type=str, default="1,100",
                        help="requests per IPC message, comma-separated")
    parser.add_argument("--amount-max", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", default=str(e2e_load.LOAD_CONFIG))
    parser.add_argument("--json-out", default=None)
    return parser


def _best(runs_us: list[float]) -> dict:
    return {"best_us": min(runs_us), "median_us": statistics.median(runs_us),
            "runs_us": [round(run, 3) for run in runs_us]}


def _open_sessions() -> tuple[ServerSession, ClientSession]:
    server, client = ServerSession(), ClientSession("bench-5A-pos-0", KEY)
    hello = server.receive_hello(client.hello_frame(0)[4:], lambda who: KEY)
    client.receive_hello_reply(server.accept_hello(hello, {"role": "terminal"})[4:])
    return server, client


def _debits(rng: random.Random, cards: list[str], count: int, amount_max: int, first_id: int):
    return [{"t": "debit", "card": rng.choice(cards), "amount": rng.randint(1, amount_max),
             "id": first_id + n} for n in range(count)]


# ------------------------------------------------------------------ codec
def codec_run(messages: list[dict], reply: dict) -> float:
    """µs of CPU per debit for the server's verify+decode and encode+sign."""
    server, client = _open_sessions()
    payloads = [client.request_frame(message)[1][4:] for message in messages]
    receive, encode = server.receive_request, server.encode_reply
    began = time.process_time()
    for payload in payloads:
        request = receive(payload)
        encode({**reply, "re": request.seq})
    return (time.process_time() - began) / len(payloads) * 1e6


# ------------------------------------------------------------------ sockets
def _loopback_pairs(count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(count)
    clients, servers = [], []
    for _ in range(count):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        clients.append(client)
        servers.append(server)
    listener.close()
    return clients, servers


def _receive_exactly(sock: socket.socket, size: int) -> None:
    """Non-blocking receive until `size` bytes came (loopback delivers at once; the loop
    only covers a segment still in flight)."""
    while size:
        try:
            size -= len(sock.recv(min(size, RECEIVE_SIZE_BYTES)))
        except BlockingIOError:
            continue


def _exchange(clients, servers, request: bytes, reply: bytes, rounds: int) -> float:
    """CPU µs per exchange: each client sends `request`, each server receives it and sends
    `reply`, each client receives it; `rounds` times over all pairs."""
    began = time.process_time()
    for _ in range(rounds):
        for client in clients:
            client.send(request)
        for server in servers:
            _receive_exactly(server, len(request))
            server.send(reply)
        for client in clients:
            _receive_exactly(client, len(reply))
    return (time.process_time() - began) / (rounds * len(clients)) * 1e6


def sockets_run(request_frame: bytes, reply_frame: bytes, connections: int, pipeline: int,
                requests: int) -> tuple[float, float]:
    """(server's µs per request at depth 1 over many connections, the same `pipeline` frames
    per send over one connection)."""
    clients, servers = _loopback_pairs(connections)
    try:
        depth_one = _exchange(clients, servers, request_frame, reply_frame,
                              max(1, requests // connections)) / 2
    finally:
        for sock in clients + servers:
            sock.close()
    clients, servers = _loopback_pairs(1)
    try:
        pipelined = _exchange(clients, servers, request_frame * pipeline, reply_frame * pipeline,
                              max(1, requests // pipeline)) / pipeline / 2
    finally:
        for sock in clients + servers:
            sock.close()
    return depth_one, pipelined


# ------------------------------------------------------------------ ipc
def _send_message(sock: socket.socket, body: bytes) -> None:
    sock.sendall(len(body).to_bytes(4, "big") + body)


def _receive_message(sock: socket.socket, buffer: bytearray) -> bytes:
    """One length-prefixed message (not the wire's frames: no tag, no protocol bounds)."""
    while True:
        if len(buffer) >= 4:
            end = 4 + int.from_bytes(buffer[:4], "big")
            if len(buffer) >= end:
                body = bytes(buffer[4:end])
                del buffer[:end]
                return body
        data = sock.recv(RECEIVE_SIZE_BYTES)
        if not data:
            raise ConnectionError("the other end closed")
        buffer += data


def _ipc_echo(sock: socket.socket, reply: dict) -> None:
    """The ledger's end: decode each batch, answer one reply per request; report its CPU."""
    buffer = bytearray()
    began = time.process_time()
    while True:
        batch = msgpack.unpackb(_receive_message(sock, buffer), raw=False)
        if not batch:
            break
        _send_message(sock, msgpack.packb([{**reply, "re": seq} for _, seq, _ in batch]))
    _send_message(sock, msgpack.packb(time.process_time() - began))


def ipc_run(messages: list[dict], reply: dict, batch_size: int) -> dict:
    """Both ends' CPU µs per request for `messages` sent in batches of `batch_size`."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:   # the child: echo, then leave without running the parent's cleanup
        parent.close()
        code = 0
        try:
            _ipc_echo(child, reply)
        except BaseException:
            code = 1
        os._exit(code)
    child.close()
    buffer = bytearray()
    try:
        parent.settimeout(IPC_CHILD_TIMEOUT_S)
        began = time.process_time()
        for start in range(0, len(messages), batch_size):
            batch = [("bench-5A-pos-0", start + n + 1, message)
                     for n, message in enumerate(messages[start:start + batch_size])]
            _send_message(parent, msgpack.packb(batch))
            replies = msgpack.unpackb(_receive_message(parent, buffer), raw=False)
            assert len(replies) == len(batch)
        network_cpu = time.process_time() - began
        _send_message(parent, msgpack.packb([]))
        ledger_cpu = msgpack.unpackb(_receive_message(parent, buffer))
    finally:
        parent.close()
        os.waitpid(pid, 0)
    count = len(messages)
    return {"network_us": network_cpu / count * 1e6, "ledger_us": ledger_cpu / count * 1e6}


# ------------------------------------------------------------------ execute and commit
def build_books(directory: pathlib.Path, args) -> tuple[list[str], list[str]]:
    """Accounts, cards and terminals in a data dir, written by the e2e benchmark's prebuild."""
    build_args = argparse.Namespace(accounts=args.accounts, terminals=args.terminals,
                                    config=args.config)
    cards, terminals = e2e_load.prebuild(directory, TAG, build_args)
    return cards, [who for who, _ in terminals]


def ledger_runs(directory: pathlib.Path, cards: list[str], terminals: list[str], args,
                rng: random.Random) -> dict:
    store = open_data_dir(str(directory))
    try:
        ledger = Ledger(store, load_config(args.config), FakeClock(int(time.time() * 1000)))
        credentials = [ledger.credential(who) for who in terminals]
        execute_us, commit_cpu_us, commit_wall_us = [], [], []
        codes: dict[str, int] = {}
        writes_per_debit, journal_bytes, write_set_bytes, reply = [], [], [], None
        next_id = 0
        for _ in range(args.repeats):
            messages = _debits(rng, cards, args.batch, args.amount_max, next_id)
            next_id += args.batch
            began = time.process_time()
            replies = [dispatch.execute(ledger, credentials[n % len(credentials)], message)
                       for n, message in enumerate(messages)]
            execute_us.append((time.process_time() - began) / args.batch * 1e6)
            for each in replies:
                codes[each["code"]] = codes.get(each["code"], 0) + 1
            reply = replies[-1]
            ledger.take_effects()   # nobody is connected to be told
            batch = store.seal()
            writes = writeback.flat(batch.writes)
            writes_per_debit.append(len(writes) / args.batch)
            journal_bytes += [len(value) for (db, _), value in writes.items()
                              if db == "journal"]
            write_set_bytes.append(sum(len(db) + len(key) + len(value or b"")
                                       for (db, key), value in writes.items())
                                   / args.batch)
            began_cpu, began_wall = time.process_time(), time.perf_counter()
            store.write_batch(batch)
            commit_wall_us.append((time.perf_counter() - began_wall) / args.batch * 1e6)
            commit_cpu_us.append((time.process_time() - began_cpu) / args.batch * 1e6)
            store.committed(batch)
        by_batch = {}
        for size in (int(size) for size in args.commit_batches.split(",")):
            by_batch[size], next_id = commit_cost(ledger, store, credentials, cards, size, args,
                                                  rng, next_id)
    finally:
        store.close()
    return {"execute": _best(execute_us), "commit_cpu": _best(commit_cpu_us),
            "commit_by_batch": by_batch,
            "commit_wall": _best(commit_wall_us), "codes": codes,
            "writes_per_debit": statistics.mean(writes_per_debit),
            "journal_record_bytes_mean": statistics.mean(journal_bytes),
            "write_set_bytes_per_debit": statistics.mean(write_set_bytes), "reply": reply}


def commit_cost(ledger, store, credentials, cards, size: int, args, rng,
                next_id: int) -> tuple[dict, int]:
    """CPU of one commit of `size` debits (seal, write transaction with its fsync, reading
    on from it): its fixed part is paid per commit, so small batches pay it per few debits.
    Returns the figures and the next id not used (a reused id writes nothing)."""
    commit_us = []
    commits = max(args.repeats, COMMIT_COST_DEBITS // size)
    for _ in range(commits):
        messages = _debits(rng, cards, size, args.amount_max, next_id)
        next_id += size
        for n, message in enumerate(messages):
            reply = dispatch.execute(ledger, credentials[n % len(credentials)], message)
            if reply["code"] != "ok":
                raise RuntimeError(f"commit-cost debit answered {reply['code']}: the figures "
                                   "would count a commit of fewer writes")
        ledger.take_effects()
        began = time.process_time()
        batch = store.seal()
        store.write_batch(batch)
        store.committed(batch)
        commit_us.append((time.process_time() - began) * 1e6)
    per_commit = _best(commit_us)
    return {"commits": commits, "per_commit": per_commit,
            "per_debit": {"best_us": per_commit["best_us"] / size,
                          "median_us": per_commit["median_us"] / size}}, next_id


# ------------------------------------------------------------------ main
def measure(args) -> dict:
    rng = random.Random(args.seed)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="stages-"))
    try:
        cards, terminals = build_books(workdir / "data", args)
        ledger = ledger_runs(workdir / "data", cards, terminals, args, rng)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reply = {key: value for key, value in ledger["reply"].items() if key != "re"}
    messages = _debits(rng, cards, args.requests, args.amount_max, 10**9)
    codec = [codec_run(messages, reply) for _ in range(args.repeats)]
    server, client = _open_sessions()
    request_frame = client.request_frame(messages[0])[1]
    reply_frame = server.encode_reply({**reply, "re": 1})
    sockets = [sockets_run(request_frame, reply_frame, args.connections, args.pipeline,
                           args.requests) for _ in range(args.repeats)]
    ipc = {}
    for batch_size in (int(size) for size in args.ipc_batches.split(",")):
        runs = [ipc_run(messages, reply, batch_size) for _ in range(args.repeats)]
        ipc[str(batch_size)] = {"network": _best([run["network_us"] for run in runs]),
                                "ledger": _best([run["ledger_us"] for run in runs])}
    return {
        "codec": _best(codec),
        "sockets_depth1": _best([run[0] for run in sockets]),
        "sockets_pipelined": _best([run[1] for run in sockets]),
        "ipc": ipc,
        "execute": ledger["execute"], "commit_cpu": ledger["commit_cpu"],
        "commit_by_batch": ledger["commit_by_batch"],
        "commit_wall": ledger["commit_wall"],
        "debit_codes": ledger["codes"], "writes_per_debit": ledger["writes_per_debit"],
        "journal_record_bytes_mean": ledger["journal_record_bytes_mean"],
        "write_set_bytes_per_debit": ledger["write_set_bytes_per_debit"],
        "request_frame_bytes": len(request_frame), "reply_frame_bytes": len(reply_frame),
    }


def _print(results: dict, args) -> None:
    def line(name, figure, note=""):
        print(f"{name:<34} best {figure['best_us']:8.2f} µs   median {figure['median_us']:8.2f}"
              f" µs  {note}")
    line("codec (server side)", results["codec"])
    line(f"sockets, depth 1 x {args.connections}", results["sockets_depth1"], "server's half")
    line(f"sockets, {args.pipeline} frames per send", results["sockets_pipelined"],
         "server's half")
    for size, figures in results["ipc"].items():
        line(f"ipc batch {size}: network end", figures["network"])
        line(f"ipc batch {size}: ledger end", figures["ledger"])
    line("execute (dispatch.execute)", results["execute"])
    line(f"commit CPU, {args.batch} per batch", results["commit_cpu"])
    line(f"commit wall with fsync", results["commit_wall"])
    for size, figures in results["commit_by_batch"].items():
        line(f"commit CPU, {size} per batch", figures["per_commit"],
             f"per commit ({figures['per_debit']['median_us']:.1f} µs per debit, median)")
    print(f"debit codes {results['debit_codes']}; {results['writes_per_debit']:.1f} writes per "
          f"debit ({results['write_set_bytes_per_debit']:.0f} B of keys and values); journal record "
          f"{results['journal_record_bytes_mean']:.0f} B; frames "
          f"{results['request_frame_bytes']} B in, {results['reply_frame_bytes']} B out")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    began = time.time()
    results = measure(args)
    results["settings"] = {key: value for key, value in vars(args).items() if key != "json_out"}
    results["settings"]["config"] = os.path.relpath(args.config, REPO)
    results["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                          "python": sys.version.split()[0], "started_at": began,
                          "seconds": round(time.time() - began, 1)}
    _print(results, args)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
