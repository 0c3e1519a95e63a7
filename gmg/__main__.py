from gmg.cli import app

app(prog_name="gmg")
