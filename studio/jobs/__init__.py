"""Persistent, resumable compression jobs: specs, a queue (Huey), workers and the stage runner.

See docs/jobs.md. Submitters use `studio.jobs.client`; the app starts a worker with
`studio.jobs.worker.start_embedded_worker()`.
"""
