"""``python -m supervisor.cli``: the ``wsup`` command, as the detached supervisor of ``--daemon`` is started."""

from supervisor.cli.main import exit_main

exit_main()
