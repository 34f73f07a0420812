"""Why a data dir cannot be looked into by this process's user, in words an operator acts
on: a permission problem is not a wrong path (`backup` as the wrong user said "not a switch
data dir; check --data" of the right one)."""

import os
import pwd

from switch.persistence.store import STORE_DIR


def permission_problem(data_dir: str) -> str | None:
    """The sentence for a data dir this user may not read (None when it may, or when
    what is wrong is something else)."""
    try:
        os.stat(os.path.join(data_dir, STORE_DIR, "data.mdb"))
        return None
    except PermissionError:
        pass
    except OSError:
        return None
    owner = _owner(data_dir)
    return (f"cannot read {data_dir}: permission denied (it belongs to {owner}, this is uid "
            f"{os.geteuid()}); run this as {owner}: sudo -u {owner} ...")


def _owner(path: str) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "its owner"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
