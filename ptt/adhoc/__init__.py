"""Ad-hoc (off-network) groups: client-created groups found by multicast, keyed without a server or a KMS online."""
