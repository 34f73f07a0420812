"""Review of the pass's carried execute step (switch/shell/poller.py): once a connection's
reading has ended, an execute step the poller put off to its next pass must run nothing.

The lifecycle (`Connection.run`) counts what is in flight once, right after reading ends
(the drain on SIGTERM, a read deadline), and may then wait to flush what the kernel would
not take before it marks the connection closed: a request executed in that window moves
money and its reply goes to a closed connection."""

from tests.shell.harness import Switch


async def test_a_put_off_execute_runs_nothing_once_reading_ended(tmp_path, nursery):
    switch = await Switch(tmp_path / "d").start(nursery)
    await switch.person("WH1", "AAAA", balance=1000)
    till = await switch.terminal("WH-POS-1")
    connection, = switch.server.sessions["WH-POS-1"]
    _, frame = till.session.request_frame({"t": "debit", "card": "AAAA", "amount": 100,
                                           "id": "d1"})
    # One pass of the poller: received and opened; its execute step is put off.
    connection._received = frame
    execute = connection.on_received()
    assert execute is not None
    # Before the next pass the drain stops the connection's reading (its lifecycle does
    # this first, then counts what is in flight).
    connection._stop_reading()
    last_txn = switch.store.last_txn
    execute()
    assert connection.in_flight == 0
    assert switch.store.last_txn == last_txn   # no money moved for a reply nobody sends
    assert not connection._backlog
    await switch.stop()
