"""``shoal ui``: a local web dashboard over a node's API.

A small ASGI app on 127.0.0.1 (``server.py``) serves the dashboard's static files (``static/``: plain
ES modules, no build step) and proxies ``/api/v1/...`` to the node, signing every call with the
user's client key as the SDK does (``proxy.py``), in the manner of ``kubectl proxy``: no key reaches
the browser and the node's auth stays as it is. ``guard.py`` decides which browser requests the
proxy accepts (its own page only); ``live.py`` merges the node's per-job event streams into one.
"""
