from traitflow.cli import app

app()
