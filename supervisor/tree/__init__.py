"""A supervisor process (forked, or the root): OTP's supervisor behaviour plus the matrix.

    process.py   the composition root: SupervisorProcess
    children.py  the ordered slots: start, stop, reap, forward requests down
    slot.py      a child's runtime record and its state machine (ChildState)
    launch.py    the two launchers (worker or supervisor; external program), program.py
    recovery.py  what an exit leads to: restart type, intensity, the matrix's step
    health.py    heartbeats and memory limits (Monitors)
    requests.py  OTP's child-management calls and routing down the tree
    uplink.py    what goes up: to the parent, or to a requester
    reload.py    reload plans: the difference of two spec trees (pure)
    reconfigure.py  a reload applied inside one supervisor, recursively
    loop.py, proc.py, output.py, logsink.py, boot.py  the loop and process plumbing
"""
