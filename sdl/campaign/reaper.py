"""The reaper: Ray's processes end with the campaign that started them, even after ``kill -9``.

``ray.init`` on a machine starts a node (GCS, raylet, dashboard and runtime-env agents, workers) as
children of the driver. Ray ties some of them to the driver's life, but not all: after ``kill -9``
of the driver the dashboard and runtime-env agents were found alive with a listening port 9 times
in 10, and a resumed campaign then met their stale ports. A process cannot clean up after its own
``kill -9``, so a small watchdog in its own session does: the driver hands it the pids of the
processes Ray started and keeps a pipe to it open; the watchdog follows their descendants, and when
the pipe closes (a normal end, or the kernel closing a killed driver's files) it terminates every
one still alive: SIGTERM, then SIGKILL after a second. A zombie counts as gone (it holds no
memory, file or port; its new parent reaps it).

Run as ``python -m sdl.campaign.reaper`` by :class:`Reaper`; plain Python and psutil, no Ray.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys

import psutil

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 0.5  # processes Ray starts later than the last snapshot before a kill -9 are missed
GRACE_S = 1.0  # between SIGTERM and SIGKILL (a driver killed with -9 left nothing worth a long goodbye)


class Reaper:
    """The driver's end: start the watchdog, tell it which processes to follow, close to release it."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sdl.campaign.reaper"], stdin=subprocess.PIPE, text=True,
            start_new_session=True)  # its own session: a signal to the campaign's process group spares it

    @property
    def pid(self) -> int:
        return self._process.pid

    def follow(self, pids: set[int]) -> None:
        """Terminate these processes and their descendants when this driver ends."""
        self._process.stdin.write(" ".join(map(str, sorted(pids))) + "\n")
        self._process.stdin.flush()

    def close(self, timeout_s: float = GRACE_S + 5.0) -> None:
        """The campaign ended: whatever Ray left behind is terminated now (waits up to ``timeout_s``)."""
        try:
            self._process.stdin.close()
            self._process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("the reaper did not finish: %s", e)


def children_now() -> set[int]:
    """The pids of this process's children (before and after ``ray.init``: the difference is Ray's)."""
    return {child.pid for child in psutil.Process().children()}


def _descendants(roots: dict[int, float]) -> dict[int, float]:
    """pid -> create time of the roots still alive and all their descendants (the time guards against
    a reused pid), from one pass over the process table."""
    table: dict[int, tuple[int, float]] = {}
    for process in psutil.process_iter(["ppid", "create_time"]):
        table[process.pid] = (process.info["ppid"], process.info["create_time"])
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, float] = {}
    stack = [pid for pid, created in roots.items() if pid in table and table[pid][1] == created]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            stack.extend(children.get(pid, ()))
    return found


def _terminate(followed: dict[int, float]) -> int:
    alive = []
    for pid, created in followed.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                process.send_signal(signal.SIGTERM)
                alive.append(process)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(still, timeout=GRACE_S)
    return len(alive)


def main() -> None:
    followed: dict[int, float] = {}
    roots: dict[int, float] = {}
    stdin = sys.stdin.fileno()
    buffer = b""
    while True:
        readable, _, _ = select.select([stdin], [], [], SNAPSHOT_EVERY_S)
        if readable:
            chunk = os.read(stdin, 4096)
            if not chunk:  # the driver closed the pipe, or died and the kernel closed it
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                for pid in map(int, line.split()):
                    try:
                        roots[pid] = psutil.Process(pid).create_time()
                    except psutil.Error:
                        continue
        # Keep what was ever seen: a process orphaned when its parent dies first must still be found.
        followed.update(_descendants({**roots, **followed}))
    followed.update(_descendants({**roots, **followed}))
    followed.pop(os.getpid(), None)
    _terminate(followed)


if __name__ == "__main__":
    main()
