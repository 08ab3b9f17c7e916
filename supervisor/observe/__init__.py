"""Seeing a running tree: `top`, `events`, `check --graph`, and the service root's HTTP server.

Which process each module runs in (the folder holds both sides; the imports keep them apart):

    status, graph, events, top     the operator's process (a control client): they import
                                   nothing of tree/, runtime/ or service/
    hub, control, metrics, web,    the service root (`python -m supervisor run --metrics`):
    page                           the HTTP server thread and what the root's loop feeds it

The optional libraries (textual for `top`, prometheus_client for `/metrics`) are imported
only by the modules that need them, when they are used: the core package never does.
"""

__all__: list[str] = []
