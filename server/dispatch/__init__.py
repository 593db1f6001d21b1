"""The dispatcher interface: an HTTPS JSON API over the group manager and its ``ptt-dispatch`` client."""
