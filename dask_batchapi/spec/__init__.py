"""What the user writes: the API spec, job submissions, the project directory and its handler.

Pure validation and packaging: nothing here talks to a cluster or a store.
"""
