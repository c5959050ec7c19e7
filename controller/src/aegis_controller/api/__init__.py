"""The controller's API: service logic (``service``), the FastAPI app (``app``), mutual TLS
identity (``tls``) and its state tables (``tables``); ``serve`` runs it with uvicorn."""
