"""A worker process: `init`, then serving its callers until it is stopped.

    process.py   WorkerRuntime: init, the control channel, leaving cleanly
    callers.py   Callers: the call channels, served from one poll loop
    poller.py    a minimal poll(2) poller for that loop
"""
