"""Sub-commands of the ``textcl`` CLI (see ``textcl.cli``)."""
