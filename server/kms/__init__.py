"""The KMS: master secrets on disk, its SQLite store, TLS and XML-signing material, the admin CLI and the service.

Everything here except ``service`` is free of Twisted, so the CLI and the tests run without a reactor.
"""
