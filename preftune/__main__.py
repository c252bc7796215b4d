from preftune.cli import app

app()
