"""Helpers for tests that talk to real local servers (kinesis-local, moto server) on 127.0.0.1."""
