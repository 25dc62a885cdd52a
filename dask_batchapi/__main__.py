"""``python -m dask_batchapi`` is the ``dask-batchapi`` command."""

from dask_batchapi.api.cli import main

if __name__ == "__main__":
    main()
