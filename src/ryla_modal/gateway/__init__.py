"""The HTTP job API (FastAPI): schemas, app factory, executors, job stores."""
