"""The command line, one module per command group (see :mod:`featcache.cli`).

Importing it makes TensorFlow's start-up quiet for the commands (:mod:`featcache.core.tf_quiet`;
``FEATCACHE_TF_LOGS=1`` shows its messages)."""

from ..core.tf_quiet import install

install()
