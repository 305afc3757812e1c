from worker.ops.cli import app

app()
