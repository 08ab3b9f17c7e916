"""The caller's side of a tree (the App's process): never imports tree/, runtime/ or
service/.

    link.py      RootLink: the control channel to the root supervisor
    router.py    calls to single workers, over one CallChannel each (channel.py)
    retry.py     the one retry loop and timeout handler (also used by pool/)
    control.py   finding and dialling a service's control socket
"""
