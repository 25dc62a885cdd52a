"""Counts words per batch; on_job_complete reports the most common words seen by this worker."""

import collections
import json
import os

from cortex_internal.lib.log import logger as cortex_logger


class Handler:
    def __init__(self, config, job_spec):
        with open("stopwords.json") as f:  # the project directory is the working directory
            self.stopwords = set(json.load(f))
        self.lowercase = config.get("lowercase", True)
        self.top_n = config.get("top_n", 5)
        self.greeting = os.environ.get("GREETING", "hello")
        self.job_id = job_spec["job_id"]
        self.totals = collections.Counter()

    def handle_batch(self, payload, batch_id):
        counts = []
        for text in payload:
            words = [w.strip(".,!?;:").lower() if self.lowercase else w for w in text.split()]
            words = [w for w in words if w and w not in self.stopwords]
            self.totals.update(words)
            counts.append({"text": text, "words": len(words)})
        cortex_logger.info("counted batch", extra={"items": len(payload)})
        return counts  # written to <output>/<job_id>/part-<n>.jsonl when the job has an output

    def on_job_complete(self):
        top = self.totals.most_common(self.top_n)
        cortex_logger.info(f"{self.greeting}: top words", extra={"top": top})
