"""The one error tree of dask-batchapi.

Every error a user can cause is a :class:`BatchAPIError`; the CLI prints its message on one
line and exits non-zero, without a traceback. Messages name what was wrong, where, and the
offending value: ``item_list.batch_size must be an integer >= 1, got 0``.

::

    BatchAPIError
    ├── SpecError            API spec (batchapi.yaml / cortex.yaml) or project directory
    │   ├── HandlerError     handler.py: missing Handler class, bad signature, import failure
    │   └── DependencyError  requirements.txt / conda-packages.txt / dependencies.sh failed to install
    ├── SubmissionError      job submission JSON
    ├── SourceError          input data: no matching file, unreadable bucket, bad endpoint
    ├── StoreError           the job store cannot be read or written
    ├── ConfigError          a dask config ``batchapi.*`` setting is invalid
    ├── NotFound
    │   ├── APINotFound      no API of that name in the store
    │   ├── JobNotFound      no job of that id
    │   └── EnvironmentNotFound  no ``batchapi.environments.<name>`` (``client("aws")``)
    ├── JobStateError        the job is in the wrong state for the request (resume a live job)
    │   ├── APIRedeployed    resume of a job whose API was redeployed since (without --force)
    │   └── LeaseLost        another driver holds the job now: this one must not write
    ├── UnsafeDirectory      a private directory (sockets, logs) belongs to another user
    ├── LimitError           input over a safety limit (YAML aliases, nesting, unpacked size)
    ├── OutputError          a handler's return value cannot be written as JSON (fails a batch)
    ├── ClusterError         no cluster could be reached or built
    └── ServiceError         the job service (dask-batchapi serve) cannot start or refuses a request
        └── RequestTooLarge  a request body over batchapi.service.max-body-bytes
"""

from __future__ import annotations


class BatchAPIError(Exception):
    """Root of every error dask-batchapi raises on purpose."""


class SpecError(BatchAPIError):
    """The API spec or the project directory is invalid."""


class HandlerError(SpecError):
    """The handler file cannot be loaded or its ``Handler`` class is not usable."""


class DependencyError(SpecError):
    """The project's dependencies could not be installed on a worker.

    ``output`` holds the installer's last lines of output (its own traceback, as it were).
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output

    def info(self) -> tuple[str, str, str]:
        """(type name, message, installer output), the shape of a worker's error info."""
        return type(self).__name__, str(self), self.output


class SubmissionError(BatchAPIError):
    """The job submission is invalid."""


class SourceError(BatchAPIError):
    """The job's input data cannot be listed or read."""


class StoreError(BatchAPIError):
    """The job store cannot be read or written."""


class NotFound(BatchAPIError):
    """Something asked for by name is not in the store."""


class APINotFound(NotFound):
    """No API of that name is deployed."""


class JobNotFound(NotFound):
    """No job of that id exists for the API."""


class EnvironmentNotFound(NotFound):
    """No named environment of that name in dask config ``batchapi.environments``."""


class ConfigError(BatchAPIError):
    """A dask config ``batchapi.*`` setting is invalid."""


class JobStateError(BatchAPIError):
    """The job's state does not allow the request."""


class APIRedeployed(JobStateError):
    """The job's API was redeployed since the job ran: resuming it would mix two versions."""
class LeaseLost(JobStateError):
    """Another driver holds the job's lease now: this driver must not write to the job."""


class UnsafeDirectory(BatchAPIError):
    """A directory that must be private belongs to another user or is open to others."""


class LimitError(BatchAPIError):
    """Input over a safety limit: YAML aliases, nesting depth, unpacked size, file count."""


class OutputError(BatchAPIError):
    """A handler's return value cannot be written as JSON; its batch fails."""


class ClusterError(BatchAPIError):
    """No Dask cluster could be reached or created."""


class ServiceError(BatchAPIError):
    """The job service cannot start as asked, or refuses a request."""


class RequestTooLarge(ServiceError):
    """A request body is over the service's limit."""


class BatchAPIWarning(UserWarning):
    """Something works, but probably not as the user meant."""


class CortexPackageWarning(BatchAPIWarning):
    """The Cortex CLI package is installed too: its ``cortex`` and ours shadow each other."""
