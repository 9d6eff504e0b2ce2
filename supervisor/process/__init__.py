"""The supervisor process: the fleet of workers and its single reconcile loop, the listening sockets, the ZeroMQ
endpoints, the control commands and the status document. Nothing here runs in the CLI's process or in a worker."""
