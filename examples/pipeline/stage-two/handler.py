"""Stage two: add up the word counts of stage one's output files (one JSON line each)."""

import json

import fsspec


class Handler:
    def __init__(self, job_spec):
        self.parent = job_spec["triggered_by"]  # {"api_name", "job_id"} of stage one's job

    def handle_batch(self, payload):
        totals = {}
        for url in payload:
            with fsspec.open(url, "r") as f:
                for line in f:
                    for word, n in json.loads(line).items():
                        totals[word] = totals.get(word, 0) + n
        return {"stage_one_job_id": self.parent["job_id"], "totals": totals}
