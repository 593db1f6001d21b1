"""Groups, their members and their keys: the SQLite store and the GMK lifecycle (``GroupManager``)."""
