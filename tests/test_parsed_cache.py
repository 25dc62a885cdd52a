"""The worker's cache of values parsed by the index pass gives exactly what storage gives."""

from __future__ import annotations

import dask

from dask_batchapi.sources.batches import iter_delimited_batches, load_payloads
from dask_batchapi.sources.delimited import PARSED, InvalidJSONError, index_file


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_cached_payloads_equal_payloads_read_from_storage(tmp_path):
    urls = [
        _write(tmp_path / "a.jsonl", '{"i": 0}\n{"i": 1} {"i": 2}\n\n[3,\n 4]\n'),
        _write(tmp_path / "b.jsonl", '{"i": 5}\n{"i": oops}\n{"i": 7}\n"eight"\n'),
    ]
    cached = [index_file(u, 2, cache_key="job-a") for u in urls]
    plain = [index_file(u, 2) for u in urls]
    assert cached == plain  # caching does not change the index
    refs = list(iter_delimited_batches(cached, 3))
    from_cache = load_payloads(refs, cache_key="job-a")
    from_storage = load_payloads(refs)
    assert len(from_cache) == len(from_storage) == 3
    for got, want in zip(from_cache, from_storage, strict=True):
        if isinstance(want, InvalidJSONError):
            assert isinstance(got, InvalidJSONError) and str(got) == str(want)
        else:
            assert got == want
    assert load_payloads(refs, cache_key="another-job")[0] == from_storage[0]  # no entry: reads
    PARSED.drop("job-a")
    assert PARSED.get("job-a", urls[0]) is None


def test_cache_is_bounded_and_skips_big_files(tmp_path):
    body = "".join(f'{{"i": {i}}}\n' for i in range(2000))  # ~22 kB
    urls = [_write(tmp_path / f"{n}.jsonl", body) for n in range(4)]
    with dask.config.set({"batchapi.index-cache-bytes": 50_000}):
        for url in urls:
            index_file(url, 16, cache_key="job-b")
        held = [url for url in urls if PARSED.get("job-b", url) is not None]
        assert held == urls[-2:]  # least recently used out, within the budget
        big = _write(tmp_path / "big.jsonl", body * 3)  # over half the budget: not kept
        index_file(big, 16, cache_key="job-b")
        assert PARSED.get("job-b", big) is None
    PARSED.drop("job-b")
