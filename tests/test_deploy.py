"""The systemd units in deploy/ start what they say: systemd accepts them, their command lines
are ones the switch's and the receivers' own argument parsers take, they agree with the
example configuration the README tells an operator to install, and the programs run under
the memory hardening the units impose."""

import ctypes
import importlib
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib

import pytest
import trio

from switch import limits
from switch.cli.datadir import open_data_dir, read_admin_key, rotate_master_key
from switch.config import masterkey
from switch.shell.client import Client
from tests.paths import REPO_ROOT
from tests.key_files import write_private

DEPLOY = REPO_ROOT / "deploy"
SWITCH_UNIT = "campus-switch.service"
RECEIVER_UNITS = {"billing": "campus-billing-receiver.service",
                  "utility": "campus-utility-receiver.service"}
UNITS = [SWITCH_UNIT, *RECEIVER_UNITS.values()]
BACKUP_SERVICE, BACKUP_TIMER = "campus-switch-backup.service", "campus-switch-backup.timer"
# Where README.md "Operations" installs the checkout; every unit runs its venv's python.
INSTALLED_PYTHON = "/opt/campus-switch/.venv/bin/python"
# README.md "Operations" installs this example as /etc/campus-switch/switch.toml.
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "switch-with-receivers.toml"


def unit_settings(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings per section; a key given twice keeps both values, in order
    (systemd's own rule for ExecStart=, SystemCallFilter= and the like)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in (DEPLOY / name).read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, f"{name} ends in a continuation line"
    return sections


def service(name: str) -> dict[str, list[str]]:
    return unit_settings(name)["Service"]


def exec_start(name: str) -> tuple[str, list[str]]:
    """The module a unit runs with `python -m` and the arguments it gives it."""
    (command,) = service(name)["ExecStart"]
    argv = shlex.split(command)
    assert argv[0] == INSTALLED_PYTHON and argv[1] == "-m", argv
    return argv[2], argv[3:]


def switch_parser():
    """The switch's own argument parser, wherever the command line lives now."""
    for module_name in ("switch.cli.main", "switch.__main__"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "_parser"):
            return module._parser()
    raise AssertionError("no _parser in switch.cli.main or switch.__main__")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_every_unit_without_a_warning(tmp_path):
    # verify insists the command exists: point it at this checkout's python, nothing else changed.
    every_unit = [*UNITS, BACKUP_SERVICE, BACKUP_TIMER]
    for name in every_unit:
        text = (DEPLOY / name).read_text()
        assert name.endswith(".timer") or INSTALLED_PYTHON in text
        (tmp_path / name).write_text(text.replace(INSTALLED_PYTHON, sys.executable))
    result = subprocess.run(["systemd-analyze", "verify",
                             *(str(tmp_path / n) for n in every_unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # An unknown or misspelt key is only a warning to systemd: we hold it to be an error.
    about_ours = [line for line in result.stderr.splitlines()
                  if any(name in line for name in every_unit)]
    assert about_ours == [], result.stderr


def test_the_switch_unit_runs_serve_with_options_its_parser_takes():
    module, arguments = exec_start(SWITCH_UNIT)
    assert module == "switch"
    args = switch_parser().parse_args(arguments)
    assert args.command == "serve"
    # The data dir lives in the unit's state directory and --init is left to the operator, so
    # a lost volume is refused rather than replaced by an empty switch with a new admin key.
    (state_directory,) = service(SWITCH_UNIT)["StateDirectory"]
    assert pathlib.PurePath(args.data).parent == pathlib.PurePath("/var/lib", state_directory)
    assert not args.init
    assert args.config == "/etc/campus-switch/switch.toml"
    assert args.metrics is not None


def _backup_argv(data_root: str = "/var/lib/campus-switch",
                 backup_root: str = "/var/backups/campus-switch") -> list[str]:
    """The backup unit's command line as its shell expands it (the dated --to included),
    with its directories moved to the given ones."""
    (command,) = service(BACKUP_SERVICE)["ExecStart"]
    shell, dash_c, script = shlex.split(command.replace("%%", "%"))
    assert (shell, dash_c) == ("/bin/sh", "-c"), command
    prefix = f"exec {INSTALLED_PYTHON} -m switch "
    assert script.startswith(prefix), script
    script = (script.replace(prefix, "printf '%s\\0' ")
              .replace("/var/lib/campus-switch", data_root)
              .replace("/var/backups/campus-switch", backup_root))
    expanded = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                              check=True).stdout
    return expanded.split("\0")[:-1]


def test_the_backup_unit_copies_the_switchs_data_dir_to_a_new_dated_directory():
    args = switch_parser().parse_args(_backup_argv())
    assert args.command == "backup"
    switch_args = switch_parser().parse_args(exec_start(SWITCH_UNIT)[1])
    assert args.data == switch_args.data
    assert re.fullmatch(r"/var/backups/campus-switch/\d{4}-\d\d-\d\dT\d{4}Z", args.to), args.to
    settings = service(BACKUP_SERVICE)
    assert settings["Type"] == ["oneshot"]
    assert settings["User"] == service(SWITCH_UNIT)["User"]
    # The same state directory and mode as the switch's: running it must not loosen them.
    assert settings["StateDirectory"] == service(SWITCH_UNIT)["StateDirectory"]
    assert settings["StateDirectoryMode"] == service(SWITCH_UNIT)["StateDirectoryMode"]
    assert settings["ReadWritePaths"] == ["/var/backups/campus-switch"]
    timer = unit_settings(BACKUP_TIMER)["Timer"]
    assert timer["Unit"] == [BACKUP_SERVICE] and timer["Persistent"] == ["true"]
    assert timer["OnCalendar"]


def test_the_backup_units_command_backs_up_a_data_dir(tmp_path):
    data = tmp_path / "lib" / "data"
    store = open_data_dir(str(data))
    store.close()
    (tmp_path / "backups").mkdir()
    argv = _backup_argv(str(tmp_path / "lib"), str(tmp_path / "backups"))
    result = subprocess.run([sys.executable, "-m", "switch", *argv], capture_output=True,
                            text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    (copy,) = (tmp_path / "backups").iterdir()
    assert (copy / "admin.key").read_bytes() == (data / "admin.key").read_bytes()


@pytest.mark.parametrize("name", sorted(RECEIVER_UNITS))
def test_each_receiver_unit_runs_its_receiver_with_options_its_parser_takes(name, monkeypatch):
    unit = RECEIVER_UNITS[name]
    module_name, arguments = exec_start(unit)
    assert module_name == f"switch.receivers.{name}"
    module = importlib.import_module(module_name)
    parsed = []
    # main() parses (an option it does not take exits 2) and then serves: stop it there.
    monkeypatch.setattr(module, "run_main", lambda make_receiver, args: parsed.append(args) or 0)
    assert module.main(arguments) == 0
    (args,) = parsed
    (state_directory,) = service(unit)["StateDirectory"]
    assert args.state == f"/var/lib/{state_directory}"
    assert args.key_file.startswith("/etc/campus-switch/")
    # The switch's configuration reaches this receiver: its address and credential.
    destinations = {table["name"]: table
                    for table in tomllib.loads(EXAMPLE_CONFIG.read_text())["destinations"]}
    assert destinations[name]["credential"] == args.credential
    assert destinations[name]["address"] == "%s:%d" % args.listen


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_restarts_after_a_crash_but_not_after_an_operators_mistake(name):
    settings = service(name)
    assert settings["Restart"] == ["on-failure"]
    # Exit 2 is a mistake (a port in use, a bad configuration or key): it would fail again.
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["KillSignal"] == ["SIGTERM"]


def test_the_switch_gets_its_drain_and_its_connections():
    settings = service(SWITCH_UNIT)
    (stop,) = settings["TimeoutStopSec"]
    # Past the whole of a stop, so SIGKILL never cuts a drain short: in flight answered,
    # the last replies written within their bound, the peer's last bytes read, then the
    # last batch committed (Server.serve, Connection._close_when_answered), then the store
    # closed, what its logs hold written back.
    stop_duration_max_s = (limits.drain_timeout_s + limits.error_flush_timeout_s
                           + limits.close_linger_s + limits.drain_timeout_s
                           + limits.store_close_s)
    assert stop.endswith("s") and float(stop[:-1]) > stop_duration_max_s
    (files,) = settings["LimitNOFILE"]
    # Every session, the places kept for admins and the sockets before their hello.
    assert int(files) > (limits.connections_max + limits.connections_admin_reserved_max
                         + limits.connections_pending_max)


def _mdwe_supported() -> bool:
    """Whether this kernel refuses memory that is made writable and executable on request
    (PR_SET_MDWE, Linux 6.3): what systemd's MemoryDenyWriteExecute= enforces."""
    probe = ("import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
             "sys.exit(0 if libc.prctl(65, 1, 0, 0, 0) == 0 else 1)")
    return sys.platform == "linux" and subprocess.run([sys.executable, "-c", probe]).returncode == 0


# Refuse writable+executable memory for this process and its children, then run the module as
# `python -m` would.
_UNDER_MDWE = textwrap.dedent("""
    import ctypes, runpy, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        sys.exit("PR_SET_MDWE refused: errno %d" % ctypes.get_errno())
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def _start_under_mdwe(module: str, *arguments: str, last_line: str = "listening on"
                      ) -> tuple[subprocess.Popen, list[str]]:
    """The module started under MDWE, and its stdout up to the line starting `last_line`."""
    process = subprocess.Popen([sys.executable, "-c", _UNDER_MDWE, module, *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if line.startswith(last_line):
            return process, lines
    process.wait(timeout=30)
    raise AssertionError(f"{module} did not start under MDWE: {process.stderr.read()}")


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, stderr


def _port(lines: list[str], prefix: str) -> int:
    (line,) = [line for line in lines if line.startswith(prefix)]
    return int(line.rsplit(":", 1)[1])


@pytest.mark.slow
@pytest.mark.skipif(not _mdwe_supported(), reason="this kernel has no PR_SET_MDWE")
@pytest.mark.parametrize("name", sorted(RECEIVER_UNITS))
def test_a_receiver_serves_and_stops_with_memory_deny_write_execute(tmp_path, name):
    assert service(RECEIVER_UNITS[name])["MemoryDenyWriteExecute"] == ["yes"]
    key_file = tmp_path / "key"
    write_private(key_file, "ab" * 32)
    process, lines = _start_under_mdwe(f"switch.receivers.{name}", "--listen", "127.0.0.1:0",
                                       "--state", str(tmp_path / "state"),
                                       "--credential", "switch", "--key-file", str(key_file))
    returncode, stderr = _stop(process)
    assert returncode == 0, stderr
    assert (tmp_path / "state").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not _mdwe_supported(), reason="this kernel has no PR_SET_MDWE")
async def test_the_switch_commits_and_serves_metrics_with_memory_deny_write_execute(tmp_path):
    assert service(SWITCH_UNIT)["MemoryDenyWriteExecute"] == ["yes"]
    data = tmp_path / "data"
    process, lines = _start_under_mdwe("switch", "serve", "--init", "--data", str(data),
                                       "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                       last_line="metrics on")
    try:
        # The compiled core authorizes, LMDB commits and fsyncs, prometheus-client renders.
        admin = await Client.connect("127.0.0.1", _port(lines, "listening on"), "admin",
                                     read_admin_key(str(data)))
        opened = await admin.request({"t": "open_account", "account": "WH1", "school": "WH",
                                      "kind": "person", "holder": "x", "id_last6": "123456",
                                      "id": "o"})
        credited = await admin.request({"t": "credit", "account": "WH1", "amount": 1234,
                                        "source": "counter", "id": "c"})
        await admin.aclose()
        stream = await trio.open_tcp_stream("127.0.0.1", _port(lines, "metrics on"))
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        scraped = b""
        while chunk := await stream.receive_some():
            scraped += chunk
        await stream.aclose()
    finally:
        returncode, stderr = _stop(process)
    assert opened["code"] == "ok", opened
    assert credited["code"] == "ok" and credited["balance"] == 1234, credited
    assert b" 200 " in scraped.split(b"\r\n", 1)[0] and b"switch_" in scraped
    assert returncode == 0, stderr


README = REPO_ROOT / "README.md"


def test_the_readme_gives_the_stop_time_the_unit_gives():
    """README "Operations" says how long a stop may take and how long the unit waits: the
    unit's TimeoutStopSec and the bounds of switch/limits.py it was chosen from."""
    text = " ".join(README.read_text().split())
    (given, longest), = re.findall(r"given (\d+) s \(`TimeoutStopSec`; a stop of the switch "
                                   r"takes at most (\d+):", text)
    (stop,) = service(SWITCH_UNIT)["TimeoutStopSec"]
    assert f"{given}s" == stop
    stop_duration_max_s = (limits.drain_timeout_s + limits.error_flush_timeout_s
                           + limits.close_linger_s + limits.drain_timeout_s
                           + limits.store_close_s)
    assert float(longest) == stop_duration_max_s
    (receiver_stop,) = {service(unit)["TimeoutStopSec"][0] for unit in RECEIVER_UNITS.values()}
    assert f"a receiver is given {receiver_stop[:-1]})" in text


def test_the_readmes_upgrade_installs_every_unit_again_before_the_restart():
    """Units change between versions (the stop timeout, the metrics port, the backup units):
    an upgrade that only pulls the code runs it under the old ones."""
    text = README.read_text()
    upgrade = text[text.index("An upgrade, as root:"):]
    copy = upgrade.index("cp deploy/*.service deploy/*.timer /etc/systemd/system/")
    reload = upgrade.index("systemctl daemon-reload", copy)
    restart = upgrade.index("systemctl restart campus-switch", reload)
    assert upgrade.index("git pull") < copy < reload < restart
    copied = {path.name for pattern in ("*.service", "*.timer") for path in DEPLOY.glob(pattern)}
    assert copied == {path.name for path in DEPLOY.iterdir()}


def test_the_example_master_key_file_is_one_the_switch_unit_can_create_and_rotate(tmp_path):
    """examples/switch.toml suggests a master_key_file: under the unit's read-only system it
    must lie in a folder the switch may write, for the switch creates it when it initialises
    the data dir and rotate-master-key replaces it there (one in /etc stopped the first
    start: "Read-only file system")."""
    (suggestion,) = [line for line in (REPO_ROOT / "examples" / "switch.toml").read_text()
                     .splitlines() if line.startswith("# master_key_file =")]
    key_path = tomllib.loads(suggestion.lstrip("# "))["master_key_file"]
    settings = service(SWITCH_UNIT)
    assert settings["ProtectSystem"] == ["strict"]
    writable = [f"/var/lib/{directory}" for directory in settings["StateDirectory"]]
    writable += settings.get("ReadWritePaths", [])
    folder = pathlib.PurePath(key_path).parent
    assert any(folder == pathlib.PurePath(path) or pathlib.PurePath(path) in folder.parents
               for path in writable), (key_path, writable)
    switch_args = switch_parser().parse_args(exec_start(SWITCH_UNIT)[1])
    masterkey.resolve_path(switch_args.data, key_path)   # not inside the data dir

    # The same layout in a scratch state directory: the first start makes the key file
    # there, and a rotation given its path replaces it.
    (state_directory,) = settings["StateDirectory"]
    state = tmp_path / state_directory
    state.mkdir(mode=0o700)
    moved = key_path.replace(f"/var/lib/{state_directory}", str(state))
    data = switch_args.data.replace(f"/var/lib/{state_directory}", str(state))
    open_data_dir(data, moved).close()
    first_key = pathlib.Path(moved).read_bytes()
    assert pathlib.Path(moved).stat().st_mode & 0o777 == 0o600
    rotate_master_key(data, moved)
    assert pathlib.Path(moved).read_bytes() != first_key
    open_data_dir(data, moved).close()


def _readme_commands(start: str, end: str) -> list[str]:
    """The shell lines of README's code blocks between `start` and `end`, continuation
    lines joined, comments dropped."""
    text = README.read_text()
    section = text[text.index(start):text.index(end)]
    commands, pending = [], ""
    for line in section.splitlines():
        if not line.startswith("    ") or line.strip().startswith("#"):
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        commands.append(line.split("  #", 1)[0].strip())
    return commands


def test_a_restore_is_served_on_loopback_until_the_card_offices_work_is_redone():
    """The restored books take back revocations, lost cards and freezes made since the
    backup: README's restore serves them where no till reaches them (the unit's command
    line but for --listen on 127.0.0.1, as the unit's user), redoes that work with the admin
    command line there, and only then starts the unit, listening on 0.0.0.0."""
    commands = _readme_commands("**Restore** onto", "- `restore` refuses")
    sudo = ["sudo", "-u", service(SWITCH_UNIT)["User"][0], INSTALLED_PYTHON, "-m", "switch"]
    place = {}
    for index, command in enumerate(commands):
        argv = shlex.split(command)
        if argv[:len(sudo)] == sudo:
            place.setdefault(argv[len(sudo)], index)
    loopback = commands[place["serve"]]
    served = switch_parser().parse_args(shlex.split(loopback)[len(sudo):])
    unit = switch_parser().parse_args(exec_start(SWITCH_UNIT)[1])
    assert unit.listen[0] == "0.0.0.0"
    assert served.listen == ("127.0.0.1", unit.listen[1])
    for option in ("data", "metrics", "config", "master_key", "init"):
        assert getattr(served, option) == getattr(unit, option), option
    (connection,) = [c for c in commands if c.startswith("S=")]
    options = shlex.split(connection)[0].partition("=")[2]
    redone = [shlex.split(c.replace("$S", options)) for c in commands if " admin $S " in c]
    assert {argv[argv.index("admin") + 5] for argv in redone} >= {"revoke", "lost", "freeze",
                                                                   "rotate-key"}
    for argv in redone:
        args = switch_parser().parse_args(argv[argv.index("-m") + 2:])
        assert args.connect == served.listen and args.data == unit.data, argv
    start = commands.index("systemctl start campus-switch")
    assert place["restore"] < place["serve"] < commands.index(connection) < start
    assert all(commands.index(c) < start for c in commands if " admin $S " in c)
