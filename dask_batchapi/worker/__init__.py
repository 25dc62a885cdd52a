"""Worker side: the job's WorkerPlugin, the handler host, chunk execution, outputs, print capture."""
