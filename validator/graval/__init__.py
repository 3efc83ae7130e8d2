"""The validator side of GraVal: sample picking and checks, and the per-device session."""
