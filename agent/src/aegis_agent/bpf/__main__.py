import sys

from aegis_agent.cli import main

sys.exit(main(["segment", *sys.argv[1:]]))
