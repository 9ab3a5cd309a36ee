"""Command line: ``featcache`` (a group of every command) and the ``extract``, ``train-head``
and ``fine-tune`` shortcuts.

Each command is a thin adapter over the Python API, in a module of ``commands/``: it parses
its flags, calls the library and prints what ``commands/_output.py`` renders. Library errors
become one-line messages: exit status 2 for usage or input errors, 1 for anything else.
TensorFlow is imported only by the commands that run a model.
"""

from __future__ import annotations

import click

from .commands._help import WorkflowGroup
from .commands._shared import flag_message
from .commands.datasets import (
    audit_command,
    export_features_command,
    plot_command,
    search_command,
)
from .commands.extract import (
    backbones_command,
    extract_command,
    inspect_command,
    manifest_command,
)
from .commands.finetune import fine_tune_command
from .commands.heads import (
    compare_command,
    export_command,
    predict_command,
    train_head_command,
    zero_shot_command,
)
from .commands.serve import serve_command
from .commands.weights import weights_command

__all__ = [
    "export_features_command",
    "extract_command",
    "fine_tune_command",
    "flag_message",
    "main",
    "train_head_command",
]


@click.group(cls=WorkflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featcache")
def main() -> None:
    """Embed an image dataset once with a frozen backbone; train heads on the cache."""


for _command in (
    inspect_command,
    manifest_command,
    backbones_command,
    compare_command,
    predict_command,
    fine_tune_command,
    export_command,
    serve_command,
    weights_command,
    audit_command,
    search_command,
    plot_command,
    export_features_command,
    extract_command,
    train_head_command,
    zero_shot_command,
):
    main.add_command(_command)

if __name__ == "__main__":
    main()
