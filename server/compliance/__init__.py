"""Compliance access to recordings (issue 17): the server operator's ciphertext export and ``ptt-audit``."""
