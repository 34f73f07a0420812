"""An import (accounts or a subsidy batch) past the admin's request budget: what was answered
`busy` is sent again; and a row's card goes only after its account was opened, so no refusal
is remembered under a card's id that a rerun would replay."""

import csv
import io

import pytest
import trio

from switch import limits
from switch.cli import admin as admin_cli
from tests.cli.conftest import serving
from tests.cli.helpers import admin
from tests.key_files import write_private


def _term_csv(path, students: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["type", "account", "school", "holder", "id_last6", "card", "utility"])
        for n in range(students):
            writer.writerow(["student", f"WH2027{n:04d}", "WH", f"s{n}", f"{n:06d}",
                             f"{0xB0000 + n:X}", ""])


@pytest.fixture
def switch_with_small_admin_budget(tmp_path):
    config = tmp_path / "switch.toml"
    config.write_text("admin_requests_per_s = 100.0\nadmin_requests_burst = 10\n")
    data = tmp_path / "data"
    with serving(data, "--config", str(config)) as connect:
        yield connect, data


def test_an_import_past_the_admin_budget_waits_and_creates_every_row(
        switch_with_small_admin_budget, tmp_path):
    connect, data = switch_with_small_admin_budget
    path = tmp_path / "term.csv"
    _term_csv(path, 60)   # 120 requests against bursts of 10
    first = admin(connect, data, "import", str(path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "60 rows: 60 created, 0 already present, 0 half applied, 0 rejected" in first.stdout
    assert "the switch answered busy to" in first.stderr
    second = admin(connect, data, "import", str(path))
    assert "60 rows: 0 created, 60 already present" in second.stdout, second.stdout
    shown = admin(connect, data, "account", "WH20270059")
    assert "B003B (active)" in shown.stdout, shown.stdout


class BusySwitch:
    """Answers `busy` to every open of the accounts in `busy_accounts`, `ok` otherwise, and
    keeps every request it was sent."""

    def __init__(self, busy_accounts):
        self.busy_accounts = set(busy_accounts)
        self.sent = []

    async def pipeline(self, messages):
        self.sent += messages
        return [{"t": m["t"], "code": "busy" if m["t"] == "open_account"
                 and m["account"] in self.busy_accounts else "ok"} for m in messages]


async def test_a_card_is_never_sent_while_its_account_was_answered_busy(monkeypatch,
                                                                         autojump_clock):
    monkeypatch.setattr(limits, "client_busy_wait_s_max", 1.0)
    rows = [(2 + n, {"type": "student", "account": f"WH2027{n:04d}", "school": "WH",
                     "holder": "s", "id_last6": "123456", "card": f"{0xB0000 + n:X}"})
            for n in range(5)]
    switch = BusySwitch({"WH20270001", "WH20270003"})
    counts = await admin_cli.run_import(switch, "term.csv", rows, out=io.StringIO())
    assert counts["created"] == 3 and counts["rejected"] == 2
    cards = {m["account"] for m in switch.sent if m["t"] == "issue_card"}
    assert cards == {"WH20270000", "WH20270002", "WH20270004"}
    opens = [m["account"] for m in switch.sent if m["t"] == "open_account"]
    # Sent again until the pauses reached the bound (0.05 + 0.1 + 0.2 + 0.4 + 0.8 s), then
    # once more, and the busy reply kept as the row's outcome.
    assert opens.count("WH20270001") == 6 and opens.count("WH20270000") == 1
    assert all("not done (busy" in plan[2] for plan in counts["problems"])


def test_a_subsidy_batch_past_the_admin_budget_waits_and_issues_every_row(
        switch_with_small_admin_budget, tmp_path):
    connect, data = switch_with_small_admin_budget
    term = tmp_path / "term.csv"
    _term_csv(term, 30)
    assert admin(connect, data, "import", str(term)).returncode == 0
    subsidies = tmp_path / "subsidy.csv"
    subsidies.write_text("account,amount\n" + "".join(
        f"WH2027{n:04d},12.50\n" for n in range(30)), encoding="utf-8")
    batch = ["--batch", "2027-03 伙食补助", "--expires", "2099-03-31"]
    first = admin(connect, data, "import-subsidies", str(subsidies), *batch)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "30 rows, 30 created, 0 already present, 0 rejected" in first.stdout, first.stdout
    assert "the switch answered busy to" in first.stderr
    second = admin(connect, data, "import-subsidies", str(subsidies), *batch)
    assert "30 rows, 0 created, 30 already present, 0 rejected" in second.stdout, second.stdout
    shown = admin(connect, data, "--json", "account", "WH20270029")
    assert '"subsidy": 1250' in shown.stdout, shown.stdout


async def test_a_subsidy_still_busy_at_the_bound_is_a_reject_that_says_to_rerun(
        monkeypatch, autojump_clock):
    monkeypatch.setattr(limits, "client_busy_wait_s_max", 1.0)

    class BusyForOne:
        sent = []

        async def pipeline(self, messages):
            self.sent += messages
            return [{"t": "subsidy", "code": "busy" if m["account"] == "WH20270001" else "ok"}
                    for m in messages]

    switch = BusyForOne()
    rows = [(2 + n, {"account": f"WH2027{n:04d}", "amount": "3"}) for n in range(3)]
    out = io.StringIO()
    counts = await admin_cli.run_subsidy_import(switch, "s.csv", rows, "2027-03", "2099-03-31",
                                                out=out)
    assert counts["created"] == 2 and counts["rejected"] == 1
    assert [m["account"] for m in switch.sent].count("WH20270001") == 6
    assert "line 3: subsidy WH20270001: not done (busy" in out.getvalue()


async def test_a_subsidy_reply_without_a_code_is_a_reject_not_a_traceback():
    class Odd:
        async def pipeline(self, messages):
            return [{"t": "subsidy"} for _ in messages]

    out = io.StringIO()
    counts = await admin_cli.run_subsidy_import(Odd(), "s.csv", [(2, {"account": "WH1",
                                                                      "amount": "3"})],
                                                "2027-03", "2099-03-31", out=out)
    assert counts["created"] == 0 and counts["rejected"] == 1
    assert "line 2: subsidy WH1: a reply without a code" in out.getvalue()


async def test_subsidies_granted_before_are_counted_as_present_and_refusals_said_in_words():
    class Switch:
        async def pipeline(self, messages):
            # A row granted under an id the switch has since forgotten is `exists` (§4.17).
            codes = {"WH1": "exists", "WH2": "ok", "WH3": "bad_request"}
            return [{"t": "subsidy", "code": codes[m["account"]]} for m in messages]

    out = io.StringIO()
    rows = [(2 + n, {"account": f"WH{n + 1}", "amount": "3"}) for n in range(3)]
    counts = await admin_cli.run_subsidy_import(Switch(), "s.csv", rows, "2027-03",
                                                "2099-03-31", out=out)
    assert (counts["created"], counts["already"], counts["rejected"]) == (1, 1, 1)
    assert ("line 4: subsidy WH3: bad_request: the term ending 2099-03-31 is over in the "
            "school's time zone, account WH3 holds batch 2027-03 with another last day"
            in out.getvalue()), out.getvalue()


@pytest.mark.parametrize("lost,reason", [
    (trio.EndOfChannel(), "the switch closed the connection"),
    (trio.TooSlowError(), "no reply in time"),
    (ConnectionResetError(104, "Connection reset by peer"),
     "[Errno 104] Connection reset by peer")])
def test_a_switch_lost_mid_import_is_said_in_words(monkeypatch, tmp_path, capsys, lost, reason):
    key_file = tmp_path / "admin.key"
    write_private(key_file, "00" * 32 + "\n")
    key_file.chmod(0o600)
    subsidies = tmp_path / "subsidy.csv"
    subsidies.write_text("account,amount\nWH20270001,12.50\n", encoding="utf-8")

    async def lose(*args):
        raise lost
    monkeypatch.setattr(admin_cli, "_run", lose)
    code = admin_cli.main(["--connect", "127.0.0.1:7000", "--key-file", str(key_file),
                           "import-subsidies", str(subsidies), "--batch", "b",
                           "--expires", "2099-03-31"])
    assert code == 4
    said = capsys.readouterr().err
    assert f"lost the switch at 127.0.0.1:7000 mid-request ({reason}); rerun the import" in said
