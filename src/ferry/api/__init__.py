"""The OMS v2 REST edge: FastAPI app, request authentication, schemas and error mapping."""
