"""What runs inside each worker process: the bootstrap that serves the user's app with uvicorn on the slot's socket,
the counting protocols, the graceful drain and the app loader. Started as ``python -m supervisor.worker SPEC``."""
