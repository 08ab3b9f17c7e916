"""The caller's client of a Pool (`app.pool(path)`), split by lock discipline.

    client.py      PoolClient: call, submit, map, sessions (the facade)
    state.py       PoolState: every decision, under the pool's one lock; returns Effects
    io.py          PoolIO: links opened, written, read; Effects carried out, outside the lock
    membership.py  the pool's workers: start, overflow growth and retirement, the tree's end
    results.py     futures and map tables; link.py, sessions.py, threads.py
"""
