"""`python -m fercure`: the command line (what `torchrun -m fercure train ...` runs on every rank)."""

from fercure.cli import app

app(prog_name="fercure")
