"""The user's surface: the Python client (:mod:`.client`), the CLI (:mod:`.cli`), progress displays.

The top layer: it imports the driver, cluster, spec and store layers, and nothing imports it
except ``dask_batchapi/__init__.py``.
"""
