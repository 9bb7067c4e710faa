from netmap.cli import run

run()
