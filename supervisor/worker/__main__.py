"""``python -m supervisor.worker SPEC_JSON``: how the supervisor starts a worker process."""

from supervisor.worker.main import main

main()
