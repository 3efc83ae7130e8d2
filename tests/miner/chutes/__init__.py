"""Small chutes hosted in real instance processes by the tests (their refs: ``tests.support.chutes``)."""
