"""``python -m attnlab.cli``: the ``attnlab`` command without its installed script."""

from attnlab.cli.main import app

app()
