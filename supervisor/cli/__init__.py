"""The ``wsup`` command line. Runs in the user's shell: it talks to a running supervisor over its control socket and
imports nothing that only the supervisor process needs (``wsup start`` imports the supervisor when it runs one)."""
