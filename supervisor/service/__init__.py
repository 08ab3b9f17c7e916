"""`python -m supervisor run`: the root supervisor in the foreground, and its control
socket.

    root.py      run_tree: the service root
    control.py   ControlServer: the control socket's server side
    reload.py    Reloader: `reload` and SIGHUP read the tree file again
"""
