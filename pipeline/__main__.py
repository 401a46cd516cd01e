"""`python -m pipeline <stage> ...`: the one command behind every Airflow task and container entrypoint."""

import sys

from pipeline.cli import main

sys.exit(main())
