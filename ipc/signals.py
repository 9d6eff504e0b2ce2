"""The signal contract between the supervisor and its workers, named once.

A worker drains on either signal: it stops accepting on its copy of the slot's socket, finishes requests in flight,
closes keep-alive connections at a clean point and closes its WebSockets, spread over the drain window, with the
code that tells clients why: 1012 (Service Restart) when it is being replaced, 1001 (Going Away) when the instance
stops. SIGUSR2 closes WebSockets without draining (a host that moves its clients to other hosts).
SIGINT and SIGHUP are ignored by workers: Ctrl-C reaches the whole foreground process group, and the
supervisor orchestrates the stop.
"""

from __future__ import annotations

import signal

CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012

DRAIN_FOR_REPLACEMENT = signal.SIGUSR1  # reload, restart, scale-down: clients should reconnect
DRAIN_FOR_STOP = signal.SIGTERM  # the instance stops

CLOSE_CODE_FOR: dict[signal.Signals, int] = {
    DRAIN_FOR_REPLACEMENT: CLOSE_SERVICE_RESTART,
    DRAIN_FOR_STOP: CLOSE_GOING_AWAY,
}
IGNORED_BY_WORKERS = (signal.SIGINT, signal.SIGHUP)
# The supervisor reopens its log file on SIGUSR1 (what logrotate sends); SIGUSR1 means "drain" to a worker, so the
# supervisor passes the reopen on as SIGWINCH, which a process ignores by default: a worker still starting, before
# its handler is installed, is not harmed by it.
REOPEN_LOG = signal.SIGUSR1
REOPEN_WORKER_LOG = signal.SIGWINCH
# `wsup drain --move-websockets`: close this worker's WebSockets with 1012 over the window the supervisor wrote in
# the worker's shared page (ipc.counters.MOVE_WINDOW), and keep serving. The same signal with no window cancels
# the closes not done yet (`wsup resume`).
MOVE_WEBSOCKETS = signal.SIGUSR2
