"""The controller's HTTP side, and nothing else: the FastAPI app (``app``: identities from
client certificates, domain errors mapped to statuses), mutual TLS identity (``tls``) and
``serve``, which runs it with uvicorn. The domain lives in :mod:`aegis_controller.domain`."""
