"""The command line, one module per command group (see :mod:`featcache.cli`)."""
