"""Files that pyright checks (`pyright` in `.ci/run`) and nothing runs: typed RPC clients.

`typed_rpc_accepted.py` must type-check. `typed_rpc_rejected.py` holds what must not:
each of its wrong lines carries the ignore comment of the error pyright must report,
and the file turns on `reportUnnecessaryTypeIgnoreComment`, so it passes only while
pyright reports every one of those errors.
"""
