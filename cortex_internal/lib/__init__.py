"""Stand-in for Cortex's ``cortex_internal.lib`` package (see :mod:`cortex_internal.lib.log`)."""
