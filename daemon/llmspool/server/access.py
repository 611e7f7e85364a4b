"""Who may see what on the socket.

Every job, result, ledger entry and cache entry belongs to the Unix user whose process sent it
(the socket's peer credentials). A request sees and manages only its own user's: another user's
job answers 404, as if it did not exist, and reports count only the caller's calls. Admins see
and manage everything: root always, and the users and groups named in ``[daemon] admins``
(a member of a group counts by its primary group or its supplementary groups).

Names are resolved when the daemon starts; a name that matches no user or group is logged and
ignored (an account created later counts after a restart).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Sequence

from llmspool.store.records import Caller, Viewer

log = logging.getLogger(__name__)
ROOT = 0


class Access:
    """Tells a caller's ``Viewer``: its uid, and whether it is an admin."""

    def __init__(self, admins: Sequence[str]) -> None:
        self._uids: set[int] = {ROOT}
        self._gids: set[int] = set()
        for name in admins:
            found = False
            try:
                self._uids.add(pwd.getpwnam(name).pw_uid)
                found = True
            except KeyError:
                pass
            try:
                self._gids.add(grp.getgrnam(name).gr_gid)
                found = True
            except KeyError:
                pass
            if not found:
                log.warning("[daemon] admins: %r is neither a user nor a group here; ignored",
                            name)
        self._known: dict[int, bool] = {}  # uid → admin, looked up once per user

    def viewer(self, caller: Caller) -> Viewer:
        uid = caller.uid
        if uid is None:
            return Viewer(None)
        admin = self._known.get(uid)
        if admin is None:
            admin = self._is_admin(uid, caller.gid)
            self._known[uid] = admin
        return Viewer(uid, admin)

    def _is_admin(self, uid: int, gid: int | None) -> bool:
        if uid in self._uids:
            return True
        if not self._gids:
            return False
        if gid is not None and gid in self._gids:
            return True
        try:
            account = pwd.getpwuid(uid)
        except KeyError:
            return False
        return bool(self._gids.intersection(os.getgrouplist(account.pw_name, account.pw_gid)))
