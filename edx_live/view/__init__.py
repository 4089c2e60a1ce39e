"""The web viewer: a Bokeh page that follows a running service's published results.

It needs only the wire protocol and its own extra (``edx-live[viewer]``: Bokeh), not the
analysis stack, so it can run on another PC than the service.

- ``feed``: the newest result documents, read from the service's PUB socket on a thread;
- ``model``: what the page shows, computed from documents (pure);
- ``page``: the Bokeh widgets of one browser tab;
- ``server``: the Bokeh server, blocking (``edx-live view``) or on a thread (demo, tests).
"""
