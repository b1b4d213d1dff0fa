"""A run whose Prefect API is gone for good ends, with a message, instead of hanging.

With a real `prefect server` (PREFECT_API_URL set), every task's state change is an API call. If
the server dies mid-run, Prefect's client retries and the flow waits on futures whose states can
no longer be recorded: measured, a run did not exit within 5 min (issue 16, D4). A daemon thread
checks the API's /health; after `COMPRESS_DISTILL_API_GONE_S` (default 180 s) without an answer it
says what is safe and what to do, and ends the process (exit 75, EX_TEMPFAIL).

That is the recovery path the store is built for: every committed node stays committed; the
local jobs die with the run (owner.py); Slurm jobs keep running, and a rerun re-attaches to them
or commits what they finished (runner._run_as_job). The temporary server of a run without
PREFECT_API_URL is the run's own child and is not watched.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import httpx

log = logging.getLogger(__name__)
GONE_ENV = "COMPRESS_DISTILL_API_GONE_S"
EXIT_API_GONE = 75
CHECK_EVERY_S = 5.0


def watch_api(api_url: str) -> threading.Event:
    """Start the watchdog for `api_url` (…/api); set the returned event to stop it."""
    give_up_s = float(os.environ.get(GONE_ENV, "180"))
    stop = threading.Event()

    def run() -> None:
        last_ok = time.monotonic()
        while not stop.wait(CHECK_EVERY_S):
            try:
                ok = httpx.get(f"{api_url.rstrip('/')}/health", timeout=CHECK_EVERY_S).status_code == 200
            except httpx.HTTPError:
                ok = False
            now = time.monotonic()
            if ok:
                last_ok = now
            elif now - last_ok >= give_up_s:
                _give_up(api_url, now - last_ok)

    threading.Thread(target=run, daemon=True, name="prefect-api-watch").start()
    return stop


def _give_up(api_url: str, silent_s: float) -> None:
    msg = (f"the Prefect API at {api_url} has not answered for {silent_s:.0f} s: ending this run "
           f"(exit {EXIT_API_GONE}). Committed nodes are kept; Slurm jobs keep running. Start the "
           "server again and rerun the same command: it resumes, re-attaching to live jobs and "
           f"committing finished ones. ({GONE_ENV} sets the wait.)")
    log.error(msg)
    print(f"error: {msg}", file=sys.stderr, flush=True)
    os._exit(EXIT_API_GONE)  # the flow's threads wait on the API: a normal exit would wait with them
