"""The job service (``dask-batchapi serve``): Cortex's HTTP job routes, a jobs dashboard and
Prometheus metrics, over :class:`~dask_batchapi.api.client.BatchClient`.

It keeps no state of its own beyond the store: two services on one store see the same jobs,
and jobs (whose drivers run detached, as from the CLI) keep running when it restarts.

- :mod:`.app`: the ASGI app and its route layout
- :mod:`.routes`: Cortex's job routes
- :mod:`.dashboard`: the dashboard's pages and the JSON they poll
- :mod:`.metrics`: ``GET /metrics``
- :mod:`.auth`: the token and its middleware
- :mod:`.server`, :mod:`.command`: listening, TLS checks, the click command
"""
