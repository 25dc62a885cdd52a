"""Stage one: count the words of each batch of texts; when every batch is done, submit stage
two over this job's output files, with Cortex's in-handler client."""

import cortex  # dask-batchapi's Cortex compatibility module: Cortex's in-handler client
from dask_batchapi import logger


class Handler:
    def __init__(self, config, job_spec):
        self.next_api = config["next_api"]
        self.job_spec = job_spec

    def handle_batch(self, payload):
        counts = {}
        for text in payload:
            for word in text.lower().split():
                counts[word] = counts.get(word, 0) + 1
        return counts  # written to <output>/<job_id>/part-<n>.jsonl

    def on_job_complete(self):
        output = self.job_spec["output"].rstrip("/")
        parts = f"{output}/{self.job_spec['job_id']}/"  # this job's output location
        client = cortex.client()  # this job's own store and cluster
        job = client.submit(
            self.next_api,
            {
                "workers": 1,
                "file_path_lister": {"s3_paths": [parts], "batch_size": 1000},
                "output": f"{output}-totals",
            },
        )
        logger.info("submitted stage two", extra={"stage_two_job_id": job.job_id})
