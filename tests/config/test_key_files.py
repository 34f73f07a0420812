"""Key files are refused when others could read or replace them, in a sentence whose command
closes the gap (PostgreSQL's rule for its server key), and a FIFO never hangs the reader."""

import os
import stat

import pytest

from switch.config.keyfile import KeyFileError, exposure, read_key_file
from tests.key_files import write_private

ME = os.geteuid()
OTHER = ME + 4242 if ME != 0 else 4242


def _status(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | mode, 1, 1, 1, uid, 0, 65, 0, 0, 0))


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_key_only_its_owner_may_use_is_taken(mode):
    assert exposure("/k.key", _status(mode, ME)) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o610])
def test_a_key_of_this_user_open_to_anyone_else_is_refused_with_chmod_600(mode):
    assert exposure("/k.key", _status(mode, ME)) == (
        f"may be read or written by others (mode {mode:04o})", "chmod 600 /k.key")


def test_a_root_owned_key_a_group_reads_is_taken_and_one_others_read_is_refused():
    # A root-owned secret the service's group reads (0640) is how a key is often handed to
    # a service user (uid 990 here); "chmod 600" would leave the service unable to read it.
    assert exposure("/etc/k.key", _status(0o640, 0), user=990) is None
    assert exposure("/etc/k.key", _status(0o644, 0), user=990) == (
        "may be read or written by others (mode 0644, owned by root)", "chmod o-rwx /etc/k.key")
    # Root itself reading its own file: the owner's rule.
    assert exposure("/etc/k.key", _status(0o640, 0), user=0) == (
        "may be read or written by others (mode 0640)", "chmod 600 /etc/k.key")


def test_a_key_of_another_user_is_refused_naming_its_owner():
    what, remedy = exposure("/k.key", _status(0o600, 991), user=990)
    assert what.startswith("is owned by ") and "(uid 991), neither this process's user " \
        "(uid 990) nor root" in what
    assert remedy.startswith("run this as ") and remedy.endswith(
        " /k.key && chmod 600 /k.key")


def test_root_takes_a_services_own_key_as_it_is_and_never_says_chown_root():
    # The outside test's operator pass: root running rotate-master-key on the service's data
    # dir was told "chown root", did it, and the service could no longer read its key.
    assert exposure("/k.key", _status(0o600, 990), user=0) is None
    assert exposure("/k.key", _status(0o640, 990), user=0) == (
        "may be read or written by others (mode 0640)", "chmod 600 /k.key")


def test_the_command_quotes_a_path_a_shell_would_split(tmp_path):
    path = tmp_path / "my key.key"
    path.write_text("ab" * 32)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as error:
        read_key_file(str(path))
    assert str(error.value).endswith(f"chmod 600 '{path}'")


def test_a_fifo_named_as_a_key_file_is_refused_at_once(tmp_path):
    path = tmp_path / "key.fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="is not a regular file"):
        read_key_file(str(path))   # before: waited for a writer for ever


def test_a_private_key_file_is_read(tmp_path):
    write_private(tmp_path / "k.key", "AB" * 32 + "\n")
    assert read_key_file(str(tmp_path / "k.key")) == bytes.fromhex("ab" * 32)


@pytest.mark.skipif(ME != 0, reason="only root can give a file to another user")
def test_a_master_key_root_rotates_stays_its_services(tmp_path):
    from switch.config import masterkey
    path = str(tmp_path / "data.key")
    masterkey.create(path, masterkey.MasterKey.generate())
    os.chown(path, 990, 991)
    masterkey.replace(path, masterkey.MasterKey.generate())
    status = os.stat(path)
    assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (990, 991, 0o600)
