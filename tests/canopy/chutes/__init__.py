"""Small example chutes for the SDK tests, loaded by reference (e.g. ``tests.canopy.chutes.basic:chute``)."""
