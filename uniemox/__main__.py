"""``python -m uniemox`` (and ``torchrun -m uniemox pretrain ...``)."""

from uniemox.cli import app

if __name__ == "__main__":
    app()
