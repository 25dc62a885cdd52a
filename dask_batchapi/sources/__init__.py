"""A job's input: listing files (prefixes and globs), batching items, delimited JSON files."""
