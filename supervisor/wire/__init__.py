"""What crosses a process boundary, imported by every process of a tree.

    messages.py  the messages of both channel kinds (one tagged union each) and the
                 reserved method names
    framing.py   length-prefixed MessagePack frames, incremental decoding, fd passing
    policy.py    a worker's CallPolicy, sent with every call channel it accepts
    trust.py     where a tree's control socket lives, and whom either side trusts on it
    wakeup.py    the one wake-up channel of every poll loop
    reload.py    the records of a reload's answer (plan, outcomes)
"""
