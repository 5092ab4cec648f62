"""The ``parapet`` command: ``up`` runs the whole suite on one machine, ``serve`` runs one service."""
