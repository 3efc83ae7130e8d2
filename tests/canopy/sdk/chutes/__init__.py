"""Small example chutes used by the SDK tests (loaded by reference, e.g. tests.canopy.sdk.chutes.basic:chute)."""
