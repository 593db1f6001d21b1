"""The ``ptt-kms`` commands by family; the parser and ``main`` are ``server.kms.cli``."""
