"""The node commands of the ``canopy`` CLI (``canopy devnet``, ``keys``, ``logs``, ``devices``,
``graval``): one typer app per module, each needing the ``node`` extra."""
